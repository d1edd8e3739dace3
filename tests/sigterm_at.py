"""Test helper: a callback that sends this process SIGTERM after a given step, as SLURM does when
it preempts a job (imported by a genlab-train subprocess through PYTHONPATH)."""

import os
import signal

import pytorch_lightning as pl


class SigtermAt(pl.Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, *_):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)
