"""genlab-report's runs: finding and reading them, their metric values and their config keys.

Every file is read through genlab.runs (the run-directory contract): `.hydra/config.yaml`,
`.hydra/overrides.yaml` and `summary.json` here; `metrics.csv` and the sample grids by
genlab.report.figures. A file that cannot be read is not an error: the run (or the piece) is
skipped, and the "PATH: reason" line is returned for the report to name.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from genlab import runs

# Metrics computed in some feature space: only comparable under the same extractor.
FEATURE_METRIC = re.compile(r"(fid|kid|isc?|inception_score|precision|recall|prc)(_|$)")
MISSING = "(missing)"
NAME = "name"  # the key that names a component given as a mapping: {name: noise_head, ...}


@dataclass
class Run:
    path: Path
    config: dict[str, Any]
    overrides: list[str]
    summary: dict[str, Any]
    values: dict[str, float]  # column name -> value, FID-like columns already split by extractor

    @property
    def status(self) -> str:
        return self.summary["status"]

    @property
    def seed(self) -> Any:
        return self.summary.get("seed")

    @property
    def trained_by(self) -> str | None:
        """For a running run, the process that trains it now ("pid P, host H"), from its lock."""
        return runs.run_holder(self.path) if self.status == "running" else None

    @property
    def status_text(self) -> str:
        if self.status != "running":
            return self.status
        holder = self.trained_by
        return (f"running, being trained now ({holder})" if holder else "running, but no "
                "process trains it (it stopped without an end; its command, run again, continues it)")


@dataclass
class Loaded:
    """What load_runs read: the runs, and a "skipped: PATH: reason" line per run it could not."""
    runs: list[Run]
    skipped: list[str] = field(default_factory=list)


def skipped(what: str) -> str:
    """The line that names an unreadable file ("PATH: reason") on stderr and in summary.md."""
    return f"skipped: {what}"


def load_runs(dirs: list[str]) -> Loaded:
    """Every run directory under `dirs` (genlab.runs.find_runs) with its saved config,
    overrides and summary; a run whose config, overrides or summary cannot be read, or whose
    status is unknown, is skipped (and named), as is a DIR that does not exist."""
    out = Loaded([], [skipped(f"{d}: does not exist") for d in dirs if not Path(d).exists()])
    for path in runs.find_runs(*dirs):
        try:
            config = runs.read_config(path)
            overrides = runs.read_overrides(path)
            summary = runs.read_summary(path)
        except runs.RunReadError as e:  # says "PATH: reason"
            out.skipped.append(skipped(str(e)))
            continue
        except OSError as e:  # permissions, a folder where a file should be
            out.skipped.append(skipped(f"{e.filename or path}: {e.strerror or e}"))
            continue
        if summary["status"] not in runs.STATUSES:
            out.skipped.append(skipped(f"{path / runs.SUMMARY}: unknown status {summary['status']!r}"))
            continue
        out.runs.append(Run(path, config, overrides, summary, summary_values(summary)))
    return out


def summary_values(summary: dict[str, Any]) -> dict[str, float]:
    """Metric values from a flat summary, keyed by report column.

    Metrics are the keys with a slash (val/elbo, test/fid); non-finite values were written as
    strings ("nan") by runs.write_summary and come back as floats here.
    """
    values = {}
    for key, v in summary.items():
        if "/" not in key or isinstance(v, bool):
            continue
        try:
            values[column_name(key, summary)] = float(v)
        except (TypeError, ValueError):
            continue  # a non-numeric entry under a metric-like name is not a metric
    return values


def column_name(metric: str, summary: dict[str, Any]) -> str:
    """The report column of a metric: FID-like ones carry their feature extractor
    ("val/fid [genlab-fmnist-cnn]"), since numbers from different extractors are not comparable."""
    if FEATURE_METRIC.match(metric.rsplit("/", 1)[-1]):
        return f"{metric} [{summary.get('fid_extractor') or 'unknown extractor'}]"
    return metric


def is_component(dotted: str, node: Any) -> bool:
    """A component given as a mapping with a name below a top-level group (`model.d_mode:
    {name: noise_head, aux_weight_d: 1.0}`): its key stands for its name, and its other keys
    (model.d_mode.aux_weight_d) for its settings. A top-level group's own name (data.name) keeps
    its key: the group is not a component of anything."""
    return "." in dotted and isinstance(node, dict) and NAME in node


def lookup(config: dict[str, Any], dotted: str) -> Any:
    """The value at a dotted key of a saved config, MISSING where there is none. A component
    given as a mapping with a name (is_component) is its name, whether the config names it as
    a string or as a mapping. A value that is an interpolation into the config itself (a
    preset's `${arms.${arm}.iwae_k}`) is resolved, so runs group by what they ran with; one that
    cannot be resolved here stays as written."""
    node: Any = config
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        if isinstance(node, str) and "${" in node:  # a node set by interpolation (`${arms.${arm}}`)
            node = _resolved(config, ".".join(parts[:i]))
        if not isinstance(node, dict) or part not in node:
            return MISSING
        node = node[part]
    for _ in range(2):  # the node, then a component's name, each possibly an interpolation
        if isinstance(node, str) and "${" in node:
            resolved = _resolved(config, dotted)
            node = node if resolved is MISSING else resolved  # one that cannot be resolved: as written
        if is_component(dotted, node):
            dotted, node = f"{dotted}.{NAME}", node[NAME]
    return node


def _resolved(config: dict[str, Any], dotted: str) -> Any:
    """The value at `dotted` with the config's own interpolations resolved, as plain containers
    (MISSING where it cannot be resolved here)."""
    try:
        value = OmegaConf.select(OmegaConf.create(config), dotted)
        return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    except Exception:  # a resolver only genlab-train registers, a typo
        return MISSING


def as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)
