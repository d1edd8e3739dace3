"""Burda et al.'s grouped learning-rate decay (genlab.callbacks.lr_schedule)."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from genlab.callbacks.lr_schedule import GroupedDecay, group_of
from genlab.config import ConfigError


def test_groups_hold_growth_to_the_i_epochs():
    groups = [group_of(e, 3) for e in range(3280 + 1)]
    assert [groups.count(i) for i in range(8)] == [3**i for i in range(8)]
    assert groups[0] == 0 and groups[1:4] == [1, 1, 1] and groups[4] == 2
    assert groups[3279] == 7 and groups[3280] == 8  # 1 + 3 + ... + 3**7 = 3,280 passes


class Linear(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(4, 1)
        self.lrs: list[float] = []

    def on_train_epoch_start(self):
        self.lrs.append(self.trainer.optimizers[0].param_groups[0]["lr"])

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def fit(tmp_path, epochs, model, ckpt_path=None):
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 4)), batch_size=4)
    trainer = pl.Trainer(max_epochs=epochs, callbacks=[GroupedDecay(growth=2, decay=0.5)],
                         logger=False, enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu", default_root_dir=tmp_path)
    trainer.fit(model, train_dataloaders=loader, ckpt_path=ckpt_path)
    return trainer


def test_each_epoch_trains_at_its_groups_rate_and_a_resumed_run_goes_on(tmp_path):
    """growth 2: epochs 0 | 1, 2 | 3-6 at 1e-3, 5e-4, 2.5e-4 (the model's hooks run after the
    callback's); a run resumed from epoch 2's checkpoint trains epochs 3 and 4 at 2.5e-4."""
    model = Linear()
    trainer = fit(tmp_path, 5, model)
    assert model.lrs == pytest.approx([1e-3, 5e-4, 5e-4, 2.5e-4, 2.5e-4])
    # a run stopped after epoch 3 and resumed from its checkpoint
    first = Linear()
    fit(tmp_path / "a", 3, first).save_checkpoint(tmp_path / "e3.ckpt")
    resumed = Linear()
    fit(tmp_path / "b", 5, resumed, ckpt_path=tmp_path / "e3.ckpt")
    assert resumed.lrs == pytest.approx([2.5e-4, 2.5e-4])
    assert trainer.optimizers[0].param_groups[0]["initial_lr"] == 1e-3


@pytest.mark.parametrize(("kwargs", "key"), [({"growth": 0}, "growth"), ({"decay": -1}, "decay")])
def test_bad_values_name_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=f"^callbacks.lr_schedule.{key}="):
        GroupedDecay(**kwargs)


def test_decay_one_leaves_the_rate_alone(tmp_path):
    model = Linear()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 4)), batch_size=4)
    pl.Trainer(max_epochs=3, callbacks=[GroupedDecay()], logger=False, enable_progress_bar=False,
               enable_model_summary=False, accelerator="cpu",
               default_root_dir=tmp_path).fit(model, train_dataloaders=loader)
    assert model.lrs == [1e-3, 1e-3, 1e-3]
