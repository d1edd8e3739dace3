"""Annealed gradient noise has the documented variance and acts inside a real Lightning fit."""

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from genlab.callbacks.gradient_noise import GradientNoise, add_gradient_noise, noise_std
from genlab.config import ConfigError


def zero_grad_param(n=1_000_000):
    p = nn.Parameter(torch.zeros(n))
    p.grad = torch.zeros(n)
    return p


@pytest.mark.parametrize("eta,gamma,step", [(0.3, 0.55, 0), (0.3, 0.55, 100), (1.0, 0.55, 7), (0.01, 0.0, 3)])
def test_noise_variance_matches_schedule(eta, gamma, step):
    p = zero_grad_param()
    std = add_gradient_noise([p], step, eta, gamma, generator=torch.Generator().manual_seed(0))
    expected = eta / (1 + step) ** gamma
    assert abs(std**2 - expected) < 1e-12
    # a million draws: the variance estimate has relative std sqrt(2 / 1e6) = 0.14%; 2% is 14 std
    assert abs(p.grad.var().item() / expected - 1) < 0.02
    assert abs(p.grad.mean().item()) < 5 * (expected / 1e6) ** 0.5


def test_noise_shrinks_with_step():
    stds = [noise_std(t, 0.3, 0.55) for t in (0, 10, 100, 1000)]
    assert all(a > b for a, b in zip(stds, stds[1:], strict=False))
    early, late = zero_grad_param(100_000), zero_grad_param(100_000)
    add_gradient_noise([early], 0, 0.3, 0.55, torch.Generator().manual_seed(0))
    add_gradient_noise([late], 1000, 0.3, 0.55, torch.Generator().manual_seed(0))
    assert late.grad.std() < 0.3 * early.grad.std()  # (1001)^(-0.55/2) = 0.15


def test_params_without_grad_are_skipped_and_eta_zero_is_off():
    p, q = zero_grad_param(10), nn.Parameter(torch.zeros(10))
    assert add_gradient_noise([p, q], 0, 0.0, 0.55) == 0.0
    assert torch.equal(p.grad, torch.zeros(10)) and q.grad is None
    add_gradient_noise([p, q], 0, 1.0, 0.55)
    assert p.grad.abs().sum() > 0 and q.grad is None


@pytest.mark.parametrize("kwargs,key", [({"eta": -0.1}, "callbacks.gradient_noise.eta="),
                                        ({"gamma": -1.0}, "callbacks.gradient_noise.gamma=")])
def test_bad_values_raise(kwargs, key):
    with pytest.raises(ConfigError) as err:
        GradientNoise(**kwargs)
    assert str(err.value).startswith(key)


class TinyModel(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(callbacks):
    pl.seed_everything(0, verbose=False)
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(32, 4, generator=g), torch.randn(32, 1, generator=g))
    model = TinyModel()
    trainer = pl.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", callbacks=callbacks)
    trainer.fit(model, torch.utils.data.DataLoader(data, batch_size=8))
    return model.layer.weight.detach().clone()


def test_changes_training_in_a_real_fit():
    plain, plain_again = fit([]), fit([])
    assert torch.equal(plain, plain_again)  # the comparison below is not run-to-run jitter
    callback = GradientNoise(eta=0.3, gamma=0.55)
    noisy = fit([callback])
    assert not torch.allclose(noisy, plain, atol=1e-3)
    # the last optimizer step was t = 2: its std is sqrt(0.3 / 3^0.55)
    assert abs(callback.last_std - noise_std(2, 0.3, 0.55)) < 1e-12
    # seeded by (run seed, step): a second run draws the same noise
    assert torch.equal(noisy, fit([GradientNoise(eta=0.3, gamma=0.55)]))
