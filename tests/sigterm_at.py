"""Test helper: a callback that signals its own process in a chosen phase of a run, as SLURM does
when it preempts a job (SIGTERM) or a node dies (SIGKILL). Imported by genlab-train through
PYTHONPATH, or in-process by the tests.

    +callbacks.kill._target_=sigterm_at.SigtermAt +callbacks.kill.step=12        # a training step
    +callbacks.kill.phase=val_batch +callbacks.kill.epoch=1                      # a validation batch

Phases (each fires once, in the first matching hook):
  train_step       after the training step that brings global_step to `step`
  sanity           in the first batch of the sanity-check validation before training
  val_batch        after the first validation batch of epoch `epoch` (not the last batch)
  val_last_batch   after the last validation batch of epoch `epoch`
  evaluation       inside the sample-quality evaluation of epoch `epoch` (between generating the
                   images and scoring them)
  train_epoch_end  at the end of training epoch `epoch`
  train_end        in on_train_end, after the fit's last check: before the final validation
  checkpoint       while the first checkpoint of epoch `epoch` is being written
  final_validate   after the first batch of the final validation of the best checkpoint
  final_test       after the first batch of the final test
  wandb_log        at the W&B call of the row logged at step `step`: just before it (the row's
                   line in the W&B ledger written, W&B not called) or, with after=true, just after
"""

import os
import signal

import pytorch_lightning as pl

PHASES = ("train_step", "sanity", "val_batch", "val_last_batch", "evaluation", "train_epoch_end",
          "train_end", "checkpoint", "final_validate", "final_test", "wandb_log")


class SigtermAt(pl.Callback):
    def __init__(self, step: int | None = None, phase: str = "train_step", epoch: int = 0,
                 signal_name: str = "SIGTERM", after: bool = False):
        if phase not in PHASES:
            raise ValueError(f"phase={phase!r}; allowed: {', '.join(PHASES)}")
        self.step, self.phase, self.epoch, self.after = step, phase, epoch, after
        self.signum = signal.Signals[signal_name]
        self.fired = False

    def _fire(self, phase: str, when: bool = True) -> None:
        if phase == self.phase and when and not self.fired:
            self.fired = True
            os.kill(os.getpid(), self.signum)

    def setup(self, trainer, pl_module, stage):
        if self.phase == "wandb_log" and stage == "fit":
            self._wrap_wandb_log(trainer)
        if self.phase != "evaluation" or stage != "fit":
            return
        from genlab.callbacks.evaluation import Evaluation

        (evaluation,) = [cb for cb in trainer.callbacks if isinstance(cb, Evaluation)]
        score = evaluation.score

        def interrupted_score(*args, **kwargs):
            self._fire("evaluation", trainer.current_epoch == self.epoch)
            return score(*args, **kwargs)

        evaluation.score = interrupted_score

    def _wrap_wandb_log(self, trainer) -> None:
        from pytorch_lightning.loggers import WandbLogger

        (logger,) = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        run = logger.experiment
        log = run.log

        def log_and_signal(data, *args, **kwargs):
            here = data.get("trainer/global_step") == self.step
            self._fire("wandb_log", here and not self.after)
            out = log(data, *args, **kwargs)
            self._fire("wandb_log", here and self.after)
            return out

        run.log = log_and_signal

    def on_train_batch_end(self, trainer, *_):
        self._fire("train_step", trainer.global_step == self.step)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, *_):
        if trainer.sanity_checking:
            self._fire("sanity", batch_idx == 0)
        elif trainer.state.fn == "validate":
            self._fire("final_validate", batch_idx == 0)
        elif trainer.current_epoch == self.epoch:
            last = batch_idx == trainer.num_val_batches[0] - 1
            self._fire("val_last_batch" if last else "val_batch", batch_idx == 0 or last)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, *_):
        self._fire("final_test", batch_idx == 0)

    def on_train_epoch_end(self, trainer, pl_module):
        self._fire("train_epoch_end", trainer.current_epoch == self.epoch)

    def on_train_end(self, trainer, pl_module):
        self._fire("train_end")

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        self._fire("checkpoint", trainer.current_epoch == self.epoch and trainer.state.fn == "fit")
