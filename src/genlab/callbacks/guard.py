"""Guards of a run: a non-finite or exploding training loss (or non-finite parameters) ends it
with status `diverged`; SIGTERM (how SLURM preempts) or Ctrl-C saves checkpoints/last.ckpt
first, so the next attempt continues from it."""

from __future__ import annotations

import weakref
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.exceptions import SIGTERMException
from torch import Tensor

from genlab.compat import request_sigterm_stop, rewind_validation_progress, val_batches_completed
from genlab.config import require_positive


class DivergedError(RuntimeError):
    """Training diverged: a non-finite or exploding loss, or non-finite parameters."""


class DivergenceGuard(pl.Callback):
    """Ends a run whose training diverged (genlab-train then writes status `diverged`).

    The loss(es) each training step returned are kept (detached, on the device) and checked
    together every `every_n_steps` steps and after the last step of each training epoch (before
    that epoch's validation and checkpoint): non-finite, or |loss| > max_abs_loss (explosion: a
    learning rate of 1e6 gave finite losses of 4e30), with a check that every parameter is finite.
    So a step costs one list append (no device work, and on a GPU no wait for the device), and a
    bad step in between is never missed.
    """

    def __init__(self, every_n_steps: int = 50, max_abs_loss: float = 1e8):
        require_positive(every_n_steps, "callbacks.guard.every_n_steps", integer=True)
        require_positive(max_abs_loss, "callbacks.guard.max_abs_loss")
        self.every_n_steps, self.max_abs_loss = every_n_steps, float(max_abs_loss)
        self._losses: list[Tensor] = []  # the steps' losses since the last check

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        values = outputs.values() if isinstance(outputs, dict) else [outputs]
        for v in values:
            if isinstance(v, float):
                v = torch.tensor(v)
            if isinstance(v, torch.Tensor) and v.numel():
                self._losses.append(v.detach())
        last = batch_idx + 1 >= trainer.num_training_batches
        if trainer.global_step % self.every_n_steps == 0 or last:
            self._check(trainer, pl_module)

    def _check(self, trainer, pl_module) -> None:
        reason = None
        params = [p.detach() for p in pl_module.parameters()]
        if self._losses:
            device = self._losses[0].device
            losses = torch.cat([v.flatten().to(device) for v in self._losses])
            if bool((~torch.isfinite(losses) | (losses.abs() > self.max_abs_loss)).any()):
                reason = (f"training loss non-finite or above callbacks.guard.max_abs_loss="
                          f"{self.max_abs_loss:g} by step {trainer.global_step}")
        if reason is None and params and not bool(torch.stack([torch.isfinite(p).all() for p in params]).all()):
            reason = f"non-finite parameters at step {trainer.global_step}"
        self._losses.clear()
        bad = reason is not None
        if trainer.world_size > 1:  # every rank stops together, or the others wait forever
            bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        if bad:
            raise DivergedError(reason or f"another process diverged by step {trainer.global_step}")


class CheckpointOnInterrupt(pl.Callback):
    """On SIGTERM (how SLURM preempts), Ctrl-C or `request_stop()` during fit, save
    `<dirpath>/last.ckpt` from which the next attempt goes on exactly as if nothing had happened.

    Lightning turns SIGTERM into an exception at its next check (after a training or validation
    batch, at the end of an epoch) on every rank. Stopped in a training step, the checkpoint holds
    the loops' progress, the data position and the random state, so the epoch goes on with the next
    batch. Validation cannot go on mid-way (its running means are not saved), so a stop inside it
    saves the state from just before it began, marked as a validation to run: the next attempt
    redoes that validation with the same random draws. A stop in the sanity check saves nothing (no
    step was taken). Every checkpoint first writes the loggers' pending rows, so the metrics.csv rows
    a checkpoint follows are on disk even if the process is killed right after it (SIGKILL).
    """

    def __init__(self, dirpath: str):
        self.path = Path(dirpath) / "last.ckpt"
        self._running_trainer: pl.Trainer | None = None
        self._before_validation: tuple[Tensor, Tensor | None, int] | None = None

    def setup(self, trainer, pl_module, stage):
        self._running_trainer = trainer
        _RUNNING.add(self)

    def teardown(self, trainer, pl_module, stage):
        _RUNNING.discard(self)

    def on_validation_start(self, trainer, pl_module):
        if trainer.state.fn != "fit" or trainer.sanity_checking:
            return
        cuda = (torch.cuda.get_rng_state(pl_module.device)
                if pl_module.device.type == "cuda" else None)
        done = val_batches_completed(trainer)
        self._before_validation = (torch.get_rng_state(), cuda, done)

    def on_validation_end(self, trainer, pl_module):
        self._before_validation = None

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        for logger in trainer.loggers:
            logger.save()

    def on_exception(self, trainer, pl_module, exception):
        _RUNNING.discard(self)  # the run ends here, whatever the exception
        if not isinstance(exception, SIGTERMException | KeyboardInterrupt):
            return
        if trainer.state.fn != "fit" or trainer.sanity_checking:
            return
        if self._before_validation is not None:
            self._rewind_validation(trainer, pl_module)
        trainer.save_checkpoint(self.path)

    def _rewind_validation(self, trainer, pl_module) -> None:
        """Put the process back where the interrupted validation began: the random state it
        started from, and the validation loop's progress as Lightning records a validation that
        stopped inside its first batch, which a resumed fit runs again from its start. Weights,
        optimizer and training progress are untouched by validation."""
        cpu, cuda, done = self._before_validation
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, pl_module.device)
        rewind_validation_progress(trainer, done)


# the fits in this process that request_stop() reaches (one, or one per rank's process)
_RUNNING: weakref.WeakSet[CheckpointOnInterrupt] = weakref.WeakSet()


def stop_if_requested(trainer: pl.Trainer) -> None:
    """Raise SIGTERMException, as Lightning does at its own checks, when a stop reached `trainer`
    after the last check of its fit, validation or test (in its last step or batch, or in
    on_train_end). Lightning forgets such a stop when the trainer's next fit, validation or test
    starts, so genlab-train calls this between fit and the final validation and test. Every
    rank stops when one does."""
    if trainer.strategy.reduce_boolean_decision(bool(trainer.received_sigterm), all=False):
        raise SIGTERMException


def request_stop() -> bool:
    """Stop the running fit (or final validation or test) as SIGTERM does: at Lightning's next
    check a fit saves last.ckpt (see CheckpointOnInterrupt), the run ends with status interrupted
    and exit code 143, and running the same command again continues it. Only sets a flag, so it is
    safe to call from a signal handler (e.g. a cluster's time-limit warning). Returns whether a
    run was there to be stopped."""
    running = [cb._running_trainer for cb in _RUNNING if cb._running_trainer is not None]
    for trainer in running:
        request_sigterm_stop(trainer)
    return bool(running)
