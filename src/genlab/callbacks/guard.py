"""Stop a diverging run early: a non-finite training loss ends it with status `diverged`."""

from __future__ import annotations

import math

import pytorch_lightning as pl
import torch


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
