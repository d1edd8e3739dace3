"""Loggers for runs that stop and continue in their own folder: metrics.csv and the W&B run keep
every row once, whatever attempt logged it.

Lightning's CSV logger deletes an existing metrics.csv when it starts, and rewrites the whole file
in place whenever a new column appears: a run killed at the wrong moment loses the rows of its
earlier attempts. RunCSVLogger keeps them: a resumed run keeps the rows logged before its
checkpoint's step (the rows after it are logged again), and every rewrite goes through a temporary
file and a rename, so the file on disk is always a whole, earlier or later, version of itself.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from pathlib import Path

from lightning_fabric.loggers.logger import rank_zero_experiment
from pytorch_lightning.loggers import CSVLogger, WandbLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from genlab.runs import atomic_write_text


class RunCSVLogger(CSVLogger):
    """CSVLogger(save_dir, name, version, ...) that keeps a resumed run's history; call
    `resume_at(step)` before anything is logged."""

    _keep_before: int | None = None

    def resume_at(self, step: int) -> None:
        """Keep the rows of metrics.csv logged before `step` (a checkpoint's global_step: every
        row its attempt logged before saving it has a smaller step) and drop the rest."""
        if self._experiment is not None:
            raise RuntimeError("RunCSVLogger.resume_at must be called before the first log")
        self._keep_before = step

    @property
    @rank_zero_experiment  # other ranks get a no-op writer, as in CSVLogger
    def experiment(self) -> _RunWriter:
        if self._experiment is None:
            Path(self.log_dir).mkdir(parents=True, exist_ok=True)
            self._experiment = _RunWriter(self.log_dir, self._keep_before)
        return self._experiment


class _RunWriter(ExperimentWriter):
    def __init__(self, log_dir: str, keep_before: int | None):
        self._keep_before = keep_before
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        """Called once when the writer starts: a fresh run starts a fresh file, a resumed run
        keeps its history (rewritten in one step, never truncated first)."""
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return
        if self._keep_before is None:
            path.unlink()
            return
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            # a row cut short by a kill has empty trailing fields (None): it is never kept
            rows = [r for r in reader if None not in r.values() and r.get("step", "").isdigit()
                    and int(r["step"]) < self._keep_before]
            header = list(reader.fieldnames or [])
        self.metrics_keys = header  # later rows are appended under the same header
        atomic_write_text(path, _csv_text(header, rows))

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        with open(self.metrics_file_path, newline="") as f:
            rows = list(csv.DictReader(f))
        atomic_write_text(self.metrics_file_path, _csv_text(fieldnames, rows))


def _csv_text(header: list[str], rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=header)
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


class RunWandbLogger(WandbLogger):
    """WandbLogger(...) whose resumed run holds every (metric, step) once. A W&B run cannot take a
    row back, and an attempt killed after its checkpoint (SIGKILL, or a stop in the final
    validation or test) has already logged rows that the next attempt computes again, with the same
    values (resume is exact). So each row's step and keys go to <save_dir>/wandb/logged-rows.jsonl
    before the row goes to W&B, and a resumed attempt (`resume_at(step)`) skips the values an
    earlier attempt logged at or after its checkpoint's step."""

    _ledger_ready = False  # set once the ledger is read (resumed) or cleared (fresh)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._ledger = Path(self.save_dir or ".") / "wandb" / "logged-rows.jsonl"
        self._logged: set[tuple[str, int]] = set()

    def resume_at(self, step: int) -> None:
        self._ledger_ready = True
        if not self._ledger.is_file():
            return
        for line in self._ledger.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a kill: that row never reached W&B
                continue
            if row["step"] >= step:
                self._logged.update((key, row["step"]) for key in row["keys"])

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if not self._ledger_ready:  # a fresh run starts a fresh ledger
            self._ledger.unlink(missing_ok=True)
            self._ledger_ready = True
        if step is not None:
            metrics = {k: v for k, v in metrics.items() if (k, step) not in self._logged}
            if not metrics:
                return
            self._ledger.parent.mkdir(parents=True, exist_ok=True)
            with open(self._ledger, "a") as f:
                f.write(json.dumps({"step": step, "keys": sorted(metrics)}) + "\n")
        super().log_metrics(metrics, step)
