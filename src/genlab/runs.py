"""The run-directory contract in one place.

A run directory holds `.hydra/config.yaml` (the resolved config), `summary.json` (flat final
metrics plus status, seed, git_commit, fid_extractor), `metrics.csv`, `checkpoints/`, `samples/*.png`
and `wandb/`. Everything that reads or writes these files goes through this module.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

SUMMARY = "summary.json"
# running: started, not ended (or killed without warning); interrupted: stopped by SIGTERM or
# Ctrl-C after saving checkpoints/last.ckpt, which the next attempt at the run continues from;
# pruned: stopped early by an Optuna search's pruner (genlab.callbacks.pruning), not a failure
STATUSES = ("ok", "failed", "diverged", "running", "interrupted", "pruned")
# generate(n) of every family is written as samples/generated_epochNNN.png and, at the end of
# training, samples/generated_final.png (genlab.callbacks.samples): the only grid genlab-report
# shows as a run's samples; the other grids (reconstructions, chains, degraded real images,
# traversals) keep their own names, and genlab-report --grids shows them by name
GENERATED = "generated"
# top-level config keys that say where or how a run started, not which run it is (with the seed,
# which tells runs apart but not configurations); allow_unused only lets a setting through a check
STARTED = ("hydra", "paths", "resume", "ckpt_path", "logger", "tags", "allow_unused")


def flat_config(config: Any, skip: tuple[str, ...] = STARTED, prefix: str = "") -> dict[str, Any]:
    """{"model.beta": 1, ...} of a saved config, without the top-level keys in `skip`; 2.0 == 2."""
    if not isinstance(config, dict):
        if isinstance(config, float) and config.is_integer():
            return {prefix: int(config)}
        return {prefix: config}
    out = {}
    for key, value in config.items():
        if not prefix and key in skip:
            continue
        nested = isinstance(value, dict) and value
        out.update(flat_config(value, skip, f"{prefix}{key}." if nested else f"{prefix}{key}"))
    return out


def final_grid(run_dir: str | Path, name: str = GENERATED) -> Path:
    """samples/<name>_final.png: the run's grid of that name at the end of training."""
    return Path(run_dir) / "samples" / f"{name}_final.png"


class RunReadError(RuntimeError):
    """A run directory's file is missing, truncated or not what genlab wrote."""


_UMASK = os.umask(0o022)  # reading the umask means setting it: put the same value back
os.umask(_UMASK)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write via a temporary file in the same folder and rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            # mkstemp makes the file private (0600); give it the mode a plain open() would
            os.fchmod(f.fileno(), 0o666 & ~_UMASK)
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _jsonable(v: Any) -> Any:
    if hasattr(v, "item"):  # tensors and numpy scalars
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/inf; keep them readable instead of dropping them
    return v


def write_summary(run_dir: str | Path, summary: dict[str, Any]) -> Path:
    """Write summary.json atomically; keys sorted, values plain JSON."""
    if summary.get("status") not in STATUSES:
        raise ValueError(f"summary status must be one of {STATUSES}, got {summary.get('status')!r}")
    path = Path(run_dir) / SUMMARY
    atomic_write_text(path, json.dumps({k: _jsonable(v) for k, v in summary.items()},
                                       indent=2, sort_keys=True) + "\n")
    return path


def read_summary(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / SUMMARY
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise RunReadError(f"{path}: missing") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunReadError(f"{path}: corrupt or truncated ({e})") from e
    if not isinstance(data, dict) or "status" not in data:
        raise RunReadError(f"{path}: not a genlab summary (no 'status' key)")
    return data


def find_runs(*roots: str | Path) -> list[Path]:
    """Every run directory (a folder with .hydra/config.yaml) under the given roots, sorted."""
    found: set[Path] = set()
    for root in map(Path, roots):
        if (root / ".hydra" / "config.yaml").is_file():
            found.add(root)
        found.update(p.parent.parent for p in root.glob("**/.hydra/config.yaml"))
    return sorted(found)


def git_commit(cwd: str | Path | None = None) -> str | None:
    """The commit of genlab's source tree (with '+dirty' when it has uncommitted changes)."""
    here = Path(cwd) if cwd else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def read_checkpoint(path: str | Path, key: str = "ckpt") -> dict[str, Any]:
    """Load a checkpoint safely (weights_only: tensors and plain containers, no code), with one
    clear error for a missing, truncated or foreign file."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise RunReadError(f"{key}={str(path)!r}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # the unpickler fails on foreign bytes with any type (KeyError, IndexError, ...)
        raise RunReadError(f"{key}={str(path)!r}: not a readable checkpoint (corrupt, truncated "
                           f"or not written by genlab; {type(e).__name__})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise RunReadError(f"{key}={str(path)!r}: not a Lightning checkpoint (no state_dict)")
    return ckpt
