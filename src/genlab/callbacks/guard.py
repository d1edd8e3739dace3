"""Guards of a run: a non-finite or exploding training loss (or non-finite parameters) ends it
with status `diverged`; SIGTERM (how SLURM preempts) or Ctrl-C saves checkpoints/last.ckpt
first, so the next attempt continues from it."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.exceptions import SIGTERMException

from genlab.config import require_positive


class DivergedError(RuntimeError):
    """Training diverged: a non-finite or exploding loss, or non-finite parameters."""


class DivergenceGuard(pl.Callback):
    """Ends a run whose training diverged (genlab-train then writes status `diverged`).

    After every training step, the loss(es) the step returned are checked on the device:
    non-finite, or |loss| > max_abs_loss (explosion: a learning rate of 1e6 gave finite losses of
    4e30). The flag is read on the host, together with a check that every parameter is finite,
    every `every_n_steps` steps and at the end of each training epoch (before a checkpoint of it
    is written): a GPU run does not wait for the device at every step, and a bad step in between
    is never missed.
    """

    def __init__(self, every_n_steps: int = 1, max_abs_loss: float = 1e8):
        require_positive(every_n_steps, "callbacks.guard.every_n_steps", integer=True)
        require_positive(max_abs_loss, "callbacks.guard.max_abs_loss")
        self.every_n_steps, self.max_abs_loss = every_n_steps, float(max_abs_loss)
        self._bad: torch.Tensor | None = None  # on the device: a step since the last check failed

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        values = outputs.values() if isinstance(outputs, dict) else [outputs]
        for v in values:
            if isinstance(v, float):
                v = torch.tensor(v)
            if isinstance(v, torch.Tensor) and v.numel():
                v = v.detach()
                bad = (~torch.isfinite(v) | (v.abs() > self.max_abs_loss)).any()
                self._bad = bad if self._bad is None else self._bad | bad.to(self._bad.device)
        if trainer.global_step % self.every_n_steps == 0:
            self._check(trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module):
        self._check(trainer, pl_module)

    def _check(self, trainer, pl_module) -> None:
        reason = None
        params = [p.detach() for p in pl_module.parameters()]
        if self._bad is not None and bool(self._bad):
            reason = (f"training loss non-finite or above callbacks.guard.max_abs_loss="
                      f"{self.max_abs_loss:g} by step {trainer.global_step}")
        elif params and not bool(torch.stack([torch.isfinite(p).all() for p in params]).all()):
            reason = f"non-finite parameters at step {trainer.global_step}"
        self._bad = None
        bad = reason is not None
        if trainer.world_size > 1:  # every rank stops together, or the others wait forever
            bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        if bad:
            raise DivergedError(reason or f"another process diverged by step {trainer.global_step}")


class CheckpointOnInterrupt(pl.Callback):
    """On SIGTERM or Ctrl-C during fit, save `<dirpath>/last.ckpt` mid-epoch. Lightning turns
    SIGTERM into an exception at the next step boundary on every rank; the checkpoint holds the
    loops' progress, the data position and the random state, so a resumed run goes on exactly."""

    def __init__(self, dirpath: str):
        self.path = Path(dirpath) / "last.ckpt"

    def on_exception(self, trainer, pl_module, exception):
        if isinstance(exception, SIGTERMException | KeyboardInterrupt) and trainer.state.fn == "fit":
            trainer.save_checkpoint(self.path)
