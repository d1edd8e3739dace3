"""Learning-rate schedules that change the rate at epoch boundaries.

GroupedDecay is Burda et al.'s (2016, section 5): training passes grouped into runs of
growth**i epochs, i = 0, 1, 2, ..., with the rate lr * decay**i in group i. Their schedule is
growth 3, decay 10**(-1/7), eight groups: 1 + 3 + ... + 3**7 = 3,280 passes, the rate falling
from 1e-3 to 1e-4 over the last group.
"""

from __future__ import annotations

import pytorch_lightning as pl

from genlab.config import require_positive


def group_of(epoch: int, growth: int) -> int:
    """The group i of a 0-based epoch, when group i holds growth**i epochs."""
    i, end = 0, 1
    while epoch >= end:
        i += 1
        end += growth**i
    return i


class GroupedDecay(pl.Callback):
    """Sets every optimizer's rate to its initial rate * decay**i at the start of each epoch of
    group i (group i holds growth**i epochs). The initial rate is the optimizer's own (the
    model's lr), kept in each param group as torch's schedulers keep it ("initial_lr"), so it
    travels with the checkpoint and a resumed run goes on with the same rates. decay 1 (the
    default config) keeps the rate constant; otherwise the rate is logged as train/lr."""

    def __init__(self, growth: int = 3, decay: float = 1.0):
        require_positive(growth, "callbacks.lr_schedule.growth", integer=True)
        require_positive(decay, "callbacks.lr_schedule.decay")
        self.growth, self.decay = growth, float(decay)

    def on_train_epoch_start(self, trainer, pl_module):
        if self.decay == 1.0:
            return
        factor = self.decay ** group_of(trainer.current_epoch, self.growth)
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])
                group["lr"] = group["initial_lr"] * factor
        pl_module.log("train/lr", trainer.optimizers[0].param_groups[0]["lr"], on_step=False,
                      on_epoch=True)
