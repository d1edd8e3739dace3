"""The progress bar redraws by the clock, and always at a loop's last batch."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from genlab.callbacks.progress import ProgressBar
from genlab.config import ConfigError


class Tiny(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self.layer(batch[0]).pow(2).mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class CountingBar(ProgressBar):
    """Counts the train and validation bars' redraws (Lightning redraws inside the super hooks)."""

    def __init__(self, interval_s):
        super().__init__(interval_s=interval_s)
        self.drawn = {"train": [], "val": []}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        before = self.train_progress_bar.n
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self.train_progress_bar.n != before:
            self.drawn["train"].append(self.train_progress_bar.n)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        before = self.val_progress_bar.n
        super().on_validation_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)
        if self.val_progress_bar.n != before:
            self.drawn["val"].append(self.val_progress_bar.n)


def fit(bar: ProgressBar, tmp_path) -> None:
    data = torch.utils.data.TensorDataset(torch.randn(40, 4))
    loader = torch.utils.data.DataLoader(data, batch_size=4)  # 10 batches
    trainer = pl.Trainer(max_epochs=2, callbacks=[bar], logger=False, enable_checkpointing=False,
                         enable_model_summary=False, num_sanity_val_steps=0, accelerator="cpu",
                         default_root_dir=tmp_path)
    trainer.fit(Tiny(), train_dataloaders=loader, val_dataloaders=loader)


def test_a_long_interval_draws_each_loop_once_at_its_last_batch(tmp_path):
    bar = CountingBar(interval_s=3600)
    fit(bar, tmp_path)
    # the first batch of the run draws (nothing was drawn yet), then only each loop's last batch
    assert bar.drawn["train"] == [1, 10, 10]
    assert bar.drawn["val"] == [10, 10]


def test_a_short_interval_draws_every_batch(tmp_path):
    bar = CountingBar(interval_s=1e-9)
    fit(bar, tmp_path)
    assert bar.drawn["train"] == [*range(1, 11), *range(1, 11)]
    assert bar.drawn["val"] == [*range(1, 11), *range(1, 11)]


def test_a_bad_interval_names_the_key():
    with pytest.raises(ConfigError, match=r"^callbacks.progress.interval_s=0 is invalid"):
        ProgressBar(interval_s=0)
