"""The run-directory contract in one place.

A run directory holds `.hydra/config.yaml` (the resolved config), `summary.json` (flat final
metrics plus status, seed, git_commit, fid_extractor), `metrics.csv`, `checkpoints/`, `samples/*.png`,
`wandb/` and `run.lock` (`hold_run`). Everything that reads or writes these files goes through
this module.
"""

from __future__ import annotations

import csv
import errno
import fcntl
import io
import json
import math
import os
import secrets
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SUMMARY = "summary.json"
METRICS_CSV = "metrics.csv"  # written by genlab.loggers.RunCSVLogger through the functions below
WANDB = "wandb"  # the offline W&B runs, and what genlab keeps beside them (wandb_run_id, logged rows)
# running: started, not ended (or killed without warning); interrupted: stopped by SIGTERM or
# Ctrl-C after saving checkpoints/last.ckpt, which the next attempt at the run continues from;
# pruned: stopped early by an Optuna search's pruner (genlab.callbacks.pruning), not a failure
STATUSES = ("ok", "failed", "diverged", "running", "interrupted", "pruned", "timed_out")
# a run that stopped without an end of its own: the next attempt continues from last.ckpt.
# timed_out: its SLURM job hit the time limit more than hydra.launcher.max_num_timeout times
STOPPED = ("running", "interrupted", "timed_out")
# generate(n) of every family is written as samples/generated_epochNNN.png and, at the end of
# training, samples/generated_final.png (genlab.callbacks.samples): the only grid genlab-report
# shows as a run's samples; the other grids (reconstructions, chains, degraded real images,
# traversals) keep their own names, and genlab-report --grids shows them by name
GENERATED = "generated"
# top-level config keys that say where or how a run started, not which run it is (with the seed,
# which tells runs apart but not configurations); allow_unused only lets a setting through a check
STARTED = ("hydra", "paths", "resume", "ckpt_path", "logger", "tags", "allow_unused")


def flat_config(config: Any, skip: tuple[str, ...] = STARTED, prefix: str = "") -> dict[str, Any]:
    """{"model.objective.beta": 1, ...} of a saved config, without the top-level keys in `skip`; 2.0 == 2."""
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


def last_checkpoint(run_dir: str | Path) -> Path:
    """checkpoints/last.ckpt: what an interrupted attempt at the run continues from."""
    return Path(run_dir) / "checkpoints" / "last.ckpt"


class RunReadError(RuntimeError):
    """A run directory's file is missing, truncated or not what genlab wrote."""


def _umask() -> int:
    """The process's umask, read without changing it where Linux shows it (/proc/self/status);
    elsewhere reading it means setting it, and the same value is put back at once."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


TEMPORARY = ".tmp"  # a file being written is .<name>.<random>.tmp beside <name>


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary file in `path`'s folder to write the new version to: when the block ends, it is
    synced and renamed over `path`; when the block (or the sync) fails, it is removed. `path` is
    therefore always a whole file, the old one or the new one, whether the writer crashes or the
    disk fills up (the OSError then names `path`). A SIGKILL can leave the hidden temporary file,
    which nothing reads; remove_partial_files clears it when the run starts again."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMPORARY)
    os.close(fd)
    # mkstemp makes the file private (0600); give it the mode a plain open() would
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename in (None, tmp):
            e.filename = str(path)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write via a temporary file in the same folder and rename, so readers never see half a file."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write via a temporary file in the same folder and rename, so readers never see half a file."""
    atomic_write_bytes(path, text.encode())


def remove_partial_files(run_dir: str | Path) -> None:
    """Remove the temporary files of writes that a kill interrupted (atomic_path), in the run
    folder and its subfolders; call it only while no other process writes into the folder."""
    for tmp in Path(run_dir).rglob(f".*{TEMPORARY}"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)


# -- a full disk ---------------------------------------------------------------------------------
# while a run's summary says "running", RESERVE holds room for its last summary: a disk that fills
# up during the run still takes the summary that says why the run ended
RESERVE, RESERVE_BYTES = ".summary-reserve", 64 * 1024
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def disk_full(error: BaseException | None) -> OSError | None:
    """The first full-disk OSError (ENOSPC, or a quota: EDQUOT) among `error` and the exceptions
    it was raised from or while handling; None when the disk was not full."""
    found, seen = None, set()
    while error is not None and id(error) not in seen:  # a chain can loop back on itself
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in NO_SPACE:
            found = error  # keep going: a later write that failed the same way hides the first
        error = error.__cause__ or error.__context__
    return found


class DiskFull(RuntimeError):
    """A run ended because its folder's disk is full; what it kept is whole (see disk_full_message)."""


def disk_full_message(run_dir: str | Path, error: OSError) -> str:
    """One line: the folder, the file that did not fit, what the run kept and how to go on."""
    run_dir, name = Path(run_dir), Path(error.filename or "")
    what = f" writing {name.relative_to(run_dir) if name.is_relative_to(run_dir) else name}" \
        if error.filename else ""
    kept = sorted(str(p.relative_to(run_dir)) for p in (run_dir / "checkpoints").glob("*.ckpt"))
    kept += [n for n in (METRICS_CSV, f"{SUMMARY} (status failed)") if (run_dir / n.split()[0]).is_file()]
    last = last_checkpoint(run_dir)
    go_on = (f"with room again, ckpt_path={last} continues from it, as do the same command in the "
             "same folder and resume=true in a sweep" if last.is_file() else "run it again with room")
    return f"no space left on the disk of {run_dir}{what}; kept whole: {', '.join(kept) or 'nothing'}; {go_on}"


def _jsonable(v: Any) -> Any:
    if hasattr(v, "item"):  # tensors and numpy scalars
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/inf; keep them readable instead of dropping them
    return v


def write_summary(run_dir: str | Path, summary: dict[str, Any]) -> Path:
    """Write summary.json atomically; keys sorted, values plain JSON. While the status is running,
    RESERVE keeps room for the summary that ends the run, which a full disk would otherwise refuse."""
    if summary.get("status") not in STATUSES:
        raise ValueError(f"summary status must be one of {STATUSES}, got {summary.get('status')!r}")
    path, reserve = Path(run_dir) / SUMMARY, Path(run_dir) / RESERVE
    text = json.dumps({k: _jsonable(v) for k, v in summary.items()}, indent=2, sort_keys=True) + "\n"
    try:
        atomic_write_text(path, text)
    except OSError as e:
        if e.errno not in NO_SPACE or not reserve.is_file():
            raise
        reserve.unlink()  # the room kept for this moment
        atomic_write_text(path, text)
    if summary["status"] != "running":
        reserve.unlink(missing_ok=True)
    elif not reserve.is_file():
        atomic_write_bytes(reserve, bytes(RESERVE_BYTES))
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


# -- metrics.csv (genlab.loggers.RunCSVLogger) ------------------------------------------------------
def metrics_rows_before(path: str | Path, step: int) -> tuple[list[str], list[dict[str, str]]]:
    """The header of metrics.csv at `path` and its rows logged before `step`. A row cut short by
    a kill (empty trailing fields) is never kept."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = [r for r in reader if None not in r.values() and r.get("step", "").isdigit()
                and int(r["step"]) < step]
        return list(reader.fieldnames or []), rows


def write_metrics_csv(path: str | Path, header: list[str], rows: list[dict]) -> None:
    """Write metrics.csv whole, atomically, under `header` (a row's missing keys stay empty)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=header)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, out.getvalue())


# -- W&B: one W&B run per run directory, each row logged once (genlab.loggers.RunWandbLogger) --------
def wandb_run_id(run_dir: str | Path, resuming: bool, write: bool = True) -> str:
    """The W&B run of the run directory, kept in wandb/run-id: an attempt that continues from a
    checkpoint (`resuming`) gets the kept id; any other attempt gets a new one, written when
    `write` (rank zero only)."""
    path = Path(run_dir) / WANDB / "run-id"
    run_id = path.read_text().strip() if resuming and path.is_file() else ""
    if not run_id:
        run_id = secrets.token_hex(6)
        if write:
            atomic_write_text(path, run_id + "\n")
    return run_id


def logged_rows_path(run_dir: str | Path) -> Path:
    """wandb/logged-rows.jsonl: one line {"step": s, "keys": [...]} per row sent to W&B."""
    return Path(run_dir) / WANDB / "logged-rows.jsonl"


def read_logged_rows(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a logged-rows ledger; a line cut short (by an earlier genlab's append) was
    never logged and is left out. None there: []."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def write_logged_rows(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """Rewrite the ledger whole, atomically, so a kill or a full disk never leaves a line cut
    short; no rows removes it (a fresh run starts a fresh ledger)."""
    if rows:
        atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in rows))
    else:
        Path(path).unlink(missing_ok=True)


def wandb_offline_runs(run_dir: str | Path) -> list[Path]:
    """The run's offline W&B runs (wandb/offline-run-*), oldest first."""
    return sorted((Path(run_dir) / WANDB).glob("offline-run-*"))


# -- one writer per run directory ------------------------------------------------------------------
LOCK = "run.lock"
# how long an attempt retries a held lock before it gives up: a reader that tests the lock
# (`run_holder`) holds it for microseconds, and must never make a trainer give up
LOCK_WAIT_S = 0.5


class RunBusy(RuntimeError):
    """Another process holds the run directory's lock: it is training that run now."""

    def __init__(self, run_dir: str | Path, holder: str):
        super().__init__(str(run_dir), holder)  # both in args, so it pickles (submitit, joblib)
        self.run_dir, self.holder = Path(run_dir), holder

    def __str__(self) -> str:
        return f"{self.run_dir} is being trained by another process ({self.holder})"


def this_process() -> str:
    return f"pid {os.getpid()}, host {socket.gethostname()}"


_HELD: dict[Path, list[int]] = {}  # run directory -> [lock file descriptor, holds]
_FORK_HOOK: list[bool] = []  # whether _forget_held is registered (at the first hold, not at import)


def hold_run(run_dir: str | Path) -> None:
    """Take the run directory's lock, or raise RunBusy naming the process that holds it.

    The lock is an exclusive flock on `<run>/run.lock`, whose text names the holder ("pid P,
    host H"). The kernel drops it when the holding process ends, however it ends (SIGKILL
    included), so a dead run never leaves a stale lock; a forked child (a data loader worker)
    closes its copy of the file at once, so it never keeps its parent's lock alive. It holds
    across hosts where the filesystem carries flock between its clients: NFSv3 and v4 (Linux
    clients send it to the server as a lock of the whole file, unless mounted with
    `local_lock=flock` or `all`), Lustre mounted with `-o flock`, GPFS; not Lustre's
    `localflock`, which locks within one node only. The file stays after release
    (removing it would let two processes lock two files of one name); its text then names the
    last holder. Holds nest within a process (each `hold_run` needs its `release_run`)."""
    key = Path(run_dir).resolve()
    if key in _HELD:
        _HELD[key][1] += 1
        return
    if not _FORK_HOOK:
        os.register_at_fork(after_in_child=_forget_held)
        _FORK_HOOK.append(True)
    key.mkdir(parents=True, exist_ok=True)
    fd = os.open(key / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    deadline = time.monotonic() + LOCK_WAIT_S
    while not _try_lock(fd, fcntl.LOCK_EX):
        if time.monotonic() > deadline:
            holder = _holder(fd)
            os.close(fd)
            raise RunBusy(key, holder)
        time.sleep(0.05)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{this_process()}\n".encode(), 0)
    _HELD[key] = [fd, 1]


def _forget_held() -> None:
    """In a forked child: drop the copies of the parent's locked files (the lock stays the
    parent's, and ends with it)."""
    for fd, _ in _HELD.values():
        os.close(fd)
    _HELD.clear()


def release_run(run_dir: str | Path) -> None:
    """Undo one `hold_run`; the last one releases the lock."""
    key = Path(run_dir).resolve()
    held = _HELD[key]
    held[1] -= 1
    if held[1] == 0:
        del _HELD[key]
        os.close(held[0])  # closing the file releases the lock


def run_holder(run_dir: str | Path) -> str | None:
    """Which process holds the run directory's lock now ("pid P, host H"), or None. It tests the
    lock by taking a shared lock for an instant (a trainer retries for LOCK_WAIT_S meanwhile)."""
    key = Path(run_dir).resolve()
    if key in _HELD:
        return this_process()
    try:
        fd = os.open(key / LOCK, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        if not _try_lock(fd, fcntl.LOCK_SH):
            return _holder(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _try_lock(fd: int, kind: int) -> bool:
    try:
        fcntl.flock(fd, kind | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _holder(fd: int) -> str:
    # the holder writes its name right after locking; the instant before, the file is empty
    return os.pread(fd, 256, 0).decode(errors="replace").strip() or "pid and host not yet written"


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


# -- the files genlab-report reads besides summary.json ------------------------------------------

def _read_yaml(path: Path, kind: type) -> Any:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise RunReadError(f"{path}: unreadable ({type(e).__name__}: {e})") from e
    if data is None:
        data = kind()
    if not isinstance(data, kind):
        raise RunReadError(f"{path}: expected a YAML {kind.__name__}, got {type(data).__name__}")
    return data


def read_config(run_dir: str | Path) -> dict[str, Any]:
    """The run's saved config (.hydra/config.yaml) as plain YAML, interpolations unresolved;
    RunReadError ("PATH: reason") for a file that is unreadable or not a mapping."""
    return _read_yaml(Path(run_dir) / ".hydra" / "config.yaml", dict)


def read_overrides(run_dir: str | Path) -> list[str]:
    """The run's command-line overrides (.hydra/overrides.yaml) as text; [] without the file,
    RunReadError ("PATH: reason") for one that is unreadable or not a list."""
    path = Path(run_dir) / ".hydra" / "overrides.yaml"
    return [str(o) for o in _read_yaml(path, list)] if path.is_file() else []


METRICS = "metrics.csv"  # Lightning's CSVLogger: a row per logging call, most cells empty


def metrics_header(run_dir: str | Path) -> list[str]:
    """The columns of the run's metrics.csv (step, epoch and every metric it logged); OSError
    where the file is missing or cannot be opened."""
    import csv

    with open(Path(run_dir) / METRICS, newline="") as f:
        return next(csv.reader(f), [])


def read_curve(run_dir: str | Path, metric: str, epochs: int | None = None) -> dict[int, float]:
    """step -> value of one metric from the run's metrics.csv (sparse: most cells empty); {}
    where the file has no such column. ValueError without a 'step' column; OSError,
    UnicodeDecodeError, csv.Error, ValueError or TypeError for a malformed file.

    With `epochs` (the number of epochs the run trained, summary.json's "epochs"), only rows of
    epochs 0 .. epochs - 1 count: genlab-train's validation and test of the best checkpoint after
    training are logged under epoch `epochs`, and are not a point of the training curve.
    """
    import csv

    curve: dict[int, float] = {}
    with open(Path(run_dir) / METRICS, newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "step" not in reader.fieldnames:
            raise ValueError("no 'step' column")
        if metric not in reader.fieldnames:
            return curve
        for line in reader:
            cell = line.get(metric)
            if not cell:
                continue
            if epochs is not None and line.get("epoch") and int(float(line["epoch"])) >= epochs:
                continue
            curve[int(float(line["step"]))] = float(cell)  # a later row for a step wins, as in the logger
    return curve


def grid_names(run_dir: str | Path) -> list[str]:
    """The names of the run's final sample grids (samples/<name>_final.png), sorted."""
    return sorted(p.name[:-len("_final.png")] for p in (Path(run_dir) / "samples").glob("*_final.png"))


def read_grid(run_dir: str | Path, name: str = GENERATED) -> Any:
    """The run's final grid `name` (final_grid) as an image array, floats in [0, 1]; Pillow
    raises one of several exception types for a broken PNG."""
    import matplotlib.image

    return matplotlib.image.imread(final_grid(run_dir, name))
