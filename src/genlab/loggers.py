"""Loggers for runs that stop and continue in their own folder: metrics.csv and the W&B run keep
every row once, whatever attempt logged it.

Lightning's CSV logger deletes an existing metrics.csv when it starts, appends rows in place, and
rewrites the whole file in place whenever a new column appears: a run killed at the wrong moment,
or a disk that fills up, loses the rows of its earlier attempts or leaves half a row. RunCSVLogger
keeps them: a resumed run keeps the rows logged before its checkpoint's step (the rows after it are
logged again), and every write of metrics.csv (and of hparams.yaml) goes through a temporary file
and a rename, so the file on disk is always a whole, earlier or later, version of itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from lightning_fabric.loggers.logger import rank_zero_experiment
from pytorch_lightning.core.saving import save_hparams_to_yaml
from pytorch_lightning.loggers import CSVLogger, WandbLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from genlab.runs import (
    atomic_path,
    logged_rows_path,
    metrics_rows_before,
    read_logged_rows,
    write_logged_rows,
    write_metrics_csv,
)


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
        self._rows: list[dict] = []  # the rows metrics.csv holds
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
        header, rows = metrics_rows_before(path, self._keep_before)
        self.metrics_keys, self._rows = header, rows  # later rows join them under that header
        write_metrics_csv(path, header, rows)

    def save(self) -> None:
        """Write metrics.csv whole with the rows logged since the last save (Lightning calls it
        after every log): a write of the whole file, small beside a checkpoint's."""
        if not self.metrics:
            return
        keys = sorted(set(self.metrics_keys).union(*self.metrics))
        rows = self._rows + self.metrics
        write_metrics_csv(self.metrics_file_path, keys, rows)
        self.metrics_keys, self._rows, self.metrics = keys, rows, []

    def log_hparams(self, params: dict) -> None:
        self.hparams.update(params)
        with atomic_path(Path(self.log_dir) / self.NAME_HPARAMS_FILE) as tmp:
            save_hparams_to_yaml(tmp, self.hparams)


class RunWandbLogger(WandbLogger):
    """WandbLogger(...) whose resumed run holds every (metric, step) at most once. A W&B run cannot
    take a row back, and an attempt killed after its checkpoint (SIGKILL, or a stop in the final
    validation or test) has already logged rows that the next attempt computes again, with the same
    values (resume is exact). So each row's step and keys go to <save_dir>/wandb/logged-rows.jsonl
    before the row goes to W&B, and a resumed attempt (`resume_at(step)`) skips the values an
    earlier attempt logged at or after its checkpoint's step.

    The ledger is rewritten whole at each row, through a temporary file and a rename, so a kill or
    a full disk never leaves a line cut short (the next attempt's first line, appended to it, would
    be unreadable, and a third attempt would log that row again). A kill between the ledger and the
    W&B call loses that one row in W&B rather than logging it twice; the other order would double it.
    """

    _ledger_ready = False  # set once the ledger is read (resumed) or cleared (fresh)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._ledger = logged_rows_path(self.save_dir or ".")
        self._rows: list[dict] = []  # what the ledger holds
        self._logged: set[tuple[str, int]] = set()

    def resume_at(self, step: int) -> None:
        self._ledger_ready = True
        self._rows = read_logged_rows(self._ledger)
        for row in self._rows:
            if row["step"] >= step:
                self._logged.update((key, row["step"]) for key in row["keys"])

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if not self._ledger_ready:  # a fresh run starts a fresh ledger
            write_logged_rows(self._ledger, [])
            self._ledger_ready = True
        if step is not None:
            metrics = {k: v for k, v in metrics.items() if (k, step) not in self._logged}
            if not metrics:
                return
            rows = [*self._rows, {"step": step, "keys": sorted(metrics)}]
            write_logged_rows(self._ledger, rows)
            self._rows = rows
        super().log_metrics(metrics, step)
