"""Test helper: a callback that holds training at given steps until the run is told to stop, or
until the file `release` exists (imported by genlab-train jobs through PYTHONPATH). Each listed
step then forces one interruption, whatever the machine's speed; an attempt that resumed at a
step goes past it. Numbers never change: the callback only waits. It writes the step it waits at
into `progress`, so a test knows when to interrupt."""

import time
from pathlib import Path

import pytorch_lightning as pl


class StallAt(pl.Callback):
    def __init__(self, steps: list[int], progress: str, max_wait_s: float = 600,
                 release: str | None = None):
        self.steps = set(steps)
        self.progress = Path(progress)
        self.release = Path(release) if release else None
        self.max_wait_s = max_wait_s
        self.first_step: int | None = None

    def on_train_batch_start(self, trainer, *_):
        if self.first_step is None:
            self.first_step = trainer.global_step  # where this attempt started

    def on_train_batch_end(self, trainer, *_):
        step = trainer.global_step
        if step not in self.steps or step <= self.first_step:
            return
        if trainer.is_global_zero:
            self.progress.write_text(str(step))
        deadline = time.monotonic() + self.max_wait_s
        while not trainer.received_sigterm and time.monotonic() < deadline and \
                not (self.release and self.release.exists()):
            time.sleep(0.2)
