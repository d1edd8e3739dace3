"""Adam's implementations (genlab.optim): the same training, chosen by optim.impl."""

from __future__ import annotations

import pytest
import torch
from sklearn.datasets import load_digits

from genlab.config import ConfigError
from genlab.models import VAE
from genlab.optim import adam, check_settings


def digits_batches(n_batches: int, batch: int = 20) -> list[torch.Tensor]:
    x = torch.tensor(load_digits().images, dtype=torch.float32).unsqueeze(1) / 16.0
    return [x[i * batch:(i + 1) * batch] for i in range(n_batches)]


def loss_curve(impl: str, batches: list[torch.Tensor]) -> torch.Tensor:
    """The training losses of the papers' MLP VAE, from one seed, with Adam's `impl`."""
    torch.manual_seed(0)
    model = VAE(image_shape=(1, 8, 8), net={"name": "mlp", "hidden": [64, 64]}, latent_dim=8, loglik_samples=0)
    model.optim = {"impl": impl, "eps": 1e-8}
    opt = model.configure_optimizers()
    losses = []
    for i, x in enumerate(batches):
        loss = model.training_step((x, None), i)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    return torch.stack(losses)


def test_every_implementation_trains_the_same_run():
    """Same seed, same batches: the fused and foreach updates give the single-tensor loop's loss
    curve to float32 rounding, over 60 steps in which the loss falls."""
    batches = digits_batches(60)
    single = loss_curve("single", batches)
    assert single[-10:].mean() < 0.8 * single[:10].mean()  # it trains
    for impl in ("fused", "foreach", "auto"):
        other = loss_curve(impl, batches)
        assert not torch.equal(other, torch.zeros_like(other))
        torch.testing.assert_close(other, single, rtol=1e-5, atol=0, msg=impl)


def test_auto_fuses_cpu_parameters_and_each_choice_is_what_it_says():
    params = [torch.nn.Parameter(torch.zeros(3))]
    assert adam(params, "auto", lr=1e-3).defaults["fused"] is True
    assert adam(params, "fused", lr=1e-3).defaults["fused"] is True
    assert adam(params, "foreach", lr=1e-3).defaults["foreach"] is True
    single = adam(params, "single", lr=1e-3).defaults
    assert single["foreach"] is False and not single["fused"]


def test_bad_settings_name_the_key():
    with pytest.raises(ConfigError, match=r"^optim.impl='nope' is invalid; allowed: auto \| fused"):
        adam([torch.nn.Parameter(torch.zeros(1))], "nope", lr=1e-3)
    with pytest.raises(ConfigError, match=r"^optim.eps=0 is invalid; allowed: a number > 0"):
        check_settings({"eps": 0})
    with pytest.raises(ConfigError, match=r"^optim.lr is not an option of optim; allowed: impl, eps"):
        check_settings({"lr": 1e-3})


def test_epsilon_reaches_the_optimizer():
    assert adam([torch.nn.Parameter(torch.zeros(1))], eps=1e-4, lr=1e-3).defaults["eps"] == 1e-4
