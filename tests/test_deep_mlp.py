"""The gradient-noise study's deep classifier: its poor initialisation really starves the signal,
the same network learns from a good one, and test/success reports the accuracy threshold."""

from __future__ import annotations

import torch
from conftest import DATA

from genlab.data import DigitsDataModule
from genlab.models.deep_mlp import DeepMLP


def _digits():
    dm = DigitsDataModule(root=str(DATA), batch_size=64, val_size=150)
    dm.setup("fit")
    return dm


def test_simple_init_passes_almost_nothing_through_twenty_layers():
    torch.manual_seed(0)
    x = _digits().images("train", 256)
    poor = DeepMLP(image_shape=[1, 8, 8], init_std=0.1)
    good = DeepMLP(image_shape=[1, 8, 8], init="he")
    # how much the logits vary across images: the input's influence on the output
    spread = {name: m(x).std(0).mean().item() for name, m in (("poor", poor), ("good", good))}
    assert spread["poor"] < 1e-3 * spread["good"], spread


def _train(model, dm, steps):
    opt = model.configure_optimizers()
    batches = iter(dm.train_dataloader())
    for _ in range(steps):
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(dm.train_dataloader())
            batch = next(batches)
        opt.zero_grad()
        model.training_step(batch, 0).backward()
        opt.step()
    x, y, _ = next(iter(dm.val_dataloader()))
    return (model(x).argmax(1) == y).float().mean().item()


def test_the_same_network_learns_from_a_good_initialisation():
    torch.manual_seed(0)
    dm = _digits()
    acc = _train(DeepMLP(image_shape=[1, 8, 8], init="he", optimizer="adam", lr=1e-3), dm, 300)
    assert acc > 0.5, acc


def test_bad_options_are_named():
    import pytest

    from genlab.config import ConfigError

    for kwargs, key in (({"depth": 0}, "model.depth"), ({"init_std": -1.0}, "model.init_std"), ({"init": "xavier"}, "model.init"),
                        ({"optimizer": "lbfgs"}, "model.optimizer"),
                        ({"optimizer": {"name": "sgd", "momentum": 1.0}}, "model.optimizer.momentum")):
        with pytest.raises(ConfigError, match=key):
            DeepMLP(image_shape=[1, 8, 8], **kwargs)


def test_the_optimizer_is_a_component():
    """model.optimizer picks the update rule from genlab.optim.OPTIMIZERS; its settings are its own
    and the family's lr (and weight decay) reach it."""
    import pytest

    from genlab.config import ConfigError
    from genlab.optim import OPTIMIZERS

    sgd = DeepMLP(image_shape=[1, 8, 8], depth=2, optimizer={"name": "sgd", "momentum": 0.9}, lr=0.5)
    opt = sgd.configure_optimizers()
    assert type(opt) is torch.optim.SGD and opt.defaults["momentum"] == 0.9 and opt.defaults["lr"] == 0.5
    assert sgd.hparams.optimizer == {"name": "sgd", "momentum": 0.9}
    adam = DeepMLP(image_shape=[1, 8, 8], depth=2, optimizer="adam").configure_optimizers()
    assert type(adam) is torch.optim.Adam and adam.defaults["weight_decay"] == 0.0
    assert list(OPTIMIZERS) == ["sgd", "adam"]
    with pytest.raises(ConfigError, match=r"^model.optimizer.momentum is not a setting of adam; allowed: none"):
        DeepMLP(image_shape=[1, 8, 8], optimizer={"name": "adam", "momentum": 0.5})
