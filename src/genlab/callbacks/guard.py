"""Guards of a run: a non-finite training loss ends it with status `diverged`; SIGTERM (how SLURM
preempts) or Ctrl-C saves checkpoints/last.ckpt first, so the next attempt continues from it."""

from __future__ import annotations

import math
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.exceptions import SIGTERMException


class DivergedError(RuntimeError):
    """Training produced a NaN or infinite loss."""


class DivergenceGuard(pl.Callback):
    """Checks the loss(es) a training step returns, every `every_n_steps` steps."""

    def __init__(self, every_n_steps: int = 1):
        self.every_n_steps = every_n_steps

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step % self.every_n_steps:
            return
        values = outputs.values() if isinstance(outputs, dict) else [outputs]
        bad = any(isinstance(v, torch.Tensor) and v.numel() and not torch.isfinite(v).all()
                  or isinstance(v, float) and not math.isfinite(v) for v in values)
        if trainer.world_size > 1:  # every rank stops together, or the others wait forever
            bad = trainer.strategy.reduce_boolean_decision(bool(bad), all=False)
        if bad:
            raise DivergedError(f"non-finite training loss at step {trainer.global_step}")


class CheckpointOnInterrupt(pl.Callback):
    """On SIGTERM or Ctrl-C during fit, save `<dirpath>/last.ckpt` mid-epoch. Lightning turns
    SIGTERM into an exception at the next step boundary on every rank; the checkpoint holds the
    loops' progress, the data position and the random state, so a resumed run goes on exactly."""

    def __init__(self, dirpath: str):
        self.path = Path(dirpath) / "last.ckpt"

    def on_exception(self, trainer, pl_module, exception):
        if isinstance(exception, SIGTERMException | KeyboardInterrupt) and trainer.state.fn == "fit":
            trainer.save_checkpoint(self.path)
