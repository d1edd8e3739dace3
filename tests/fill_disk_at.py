"""Test helper: a callback that fills the disk of a run folder in a chosen phase of a run, as
another job on a shared disk would. Imported by genlab-train through PYTHONPATH, or in-process.

    +callbacks.fill._target_=fill_disk_at.FillDiskAt +callbacks.fill.filler=<file on that disk>
    +callbacks.fill.phase=checkpoint +callbacks.fill.epoch=1 +callbacks.fill.nth=2

Phases (each fires once); the write named is the first one that meets the full disk:
  checkpoint   the nth checkpoint of epoch `epoch` (fired while Lightning builds it, before the
               file is written; at an epoch end the best checkpoint comes first, then last.ckpt)
  train_step   after the training step that brings global_step to `step`: its metrics.csv row
  final_test   at the end of the final test, after its values are logged: summary.json
"""

import errno
import os

import pytorch_lightning as pl

PHASES = ("checkpoint", "train_step", "final_test")


def fill(filler: str) -> None:
    """Write `filler` until its disk has no byte left (down to single bytes)."""
    with open(filler, "ab", buffering=0) as f:
        for size in (1 << 20, 1 << 12, 1):
            block = bytes(size)
            try:
                while True:
                    f.write(block)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise


class FillDiskAt(pl.Callback):
    def __init__(self, filler: str, phase: str, epoch: int = 0, step: int | None = None, nth: int = 1):
        if phase not in PHASES:
            raise ValueError(f"phase={phase!r}; allowed: {', '.join(PHASES)}")
        self.filler, self.phase, self.epoch, self.step, self.nth = filler, phase, epoch, step, nth
        self.saves = 0
        self.fired = False

    def _fire(self, phase: str, when: bool = True) -> None:
        if phase == self.phase and when and not self.fired:
            self.fired = True
            fill(self.filler)
            assert os.statvfs(self.filler).f_bavail == 0

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        if trainer.state.fn == "fit" and trainer.current_epoch == self.epoch:
            self.saves += 1
            self._fire("checkpoint", self.saves == self.nth)

    def on_train_batch_end(self, trainer, *_):
        self._fire("train_step", trainer.global_step == self.step)

    def on_test_end(self, trainer, pl_module):
        self._fire("final_test")
