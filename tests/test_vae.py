"""The VAE's bounds: hand-computed cases, closed form against Monte Carlo, IWAE and log-likelihood."""

from __future__ import annotations

import csv
import math
import re

import pytest
import torch

from genlab.config import ConfigError
from genlab.models.likelihood import LIKELIHOODS
from genlab.models.vae import VAE


def small_vae(**kw) -> VAE:
    torch.manual_seed(0)
    kw.setdefault("net", {"name": "conv", "base_channels": 8})
    return VAE(image_shape=(1, 8, 8), latent_dim=kw.pop("latent_dim", 3), **kw)


def test_bernoulli_log_likelihood_by_hand():
    x = torch.tensor([[1.0, 0.0, 0.5]])
    logits = torch.tensor([[0.0, 2.0, -1.0]])
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    by_hand = (math.log(0.5)                                   # x=1, p=0.5
               + math.log(1 - sig(2.0))                        # x=0, p=sigmoid(2)
               + 0.5 * math.log(sig(-1.0)) + 0.5 * math.log(1 - sig(-1.0)))
    assert LIKELIHOODS.build("bernoulli").log_prob(x, logits).item() == pytest.approx(by_hand, rel=1e-6)


def test_gaussian_log_likelihood_by_hand():
    x, mean = torch.tensor([[0.2, 0.7]]), torch.tensor([[0.0, 1.0]])
    s = 0.5
    by_hand = sum(-0.5 * ((a - b) / s) ** 2 - math.log(s) - 0.5 * math.log(2 * math.pi)
                  for a, b in [(0.2, 0.0), (0.7, 1.0)])
    got = LIKELIHOODS.build({"name": "gaussian", "std": s}).log_prob(x, mean)
    assert got.item() == pytest.approx(by_hand, rel=1e-6)


def test_bernoulli_elbo_of_a_hand_built_case():
    # q(z|x) = N(mu, std^2) with known numbers; the decoder ignores z and returns fixed logits,
    # so ELBO = sum_pixels log Bernoulli(x; sigmoid(logits)) - KL(N(mu, std^2) || N(0, 1)).
    model = small_vae(latent_dim=2)
    mu, std = torch.tensor([[0.5, -1.0]]), torch.tensor([[1.0, 0.5]])
    logits = torch.zeros(1, 1, 8, 8)
    logits[0, 0, 0, 0] = 3.0
    x = torch.zeros(1, 1, 8, 8)
    x[0, 0, 0, 0] = 1.0
    model.posterior = lambda _: (mu, std)
    model.decode = lambda z: logits.expand(len(z), -1, -1, -1)
    recon = math.log(1 / (1 + math.exp(-3.0))) + 63 * math.log(0.5)
    kl = 0.5 * ((0.25 + 1 - 1 - 0) + (1 + 0.25 - 1 - 2 * math.log(0.5)))
    t = model.elbo_terms(x)
    assert t["recon"].item() == pytest.approx(recon, rel=1e-6)
    assert t["kl"].item() == pytest.approx(kl, rel=1e-6)
    assert t["elbo"].item() == pytest.approx(recon - kl, rel=1e-6)


def test_closed_form_kl_matches_monte_carlo():
    model = small_vae(latent_dim=4)
    mu = torch.tensor([[0.3, -1.2, 0.0, 2.0]])
    std = torch.tensor([[0.5, 1.5, 1.0, 0.2]])
    closed = 0.5 * (mu**2 + std**2 - 1 - 2 * std.log()).sum()
    torch.manual_seed(1)
    z = model.sample_z(mu, std, k=400_000)
    mc = (model.log_q(z, mu, std) - model.log_prior(z)).mean()
    assert mc.item() == pytest.approx(closed.item(), rel=5e-3)


def test_iwae_with_one_sample_is_the_elbo():
    model = small_vae()
    x = torch.rand(5, 1, 8, 8)
    # with the same noise, the k=1 bound is exactly log p(x|z) + log p(z) - log q(z|x)
    torch.manual_seed(3)
    bound = model.iwae_bound(x, 1)
    torch.manual_seed(3)
    mu, std = model.posterior(x)
    z = model.sample_z(mu, std, 1)
    direct = (model.recon_log_likelihood(x, model.decode(z[0])) + model.log_prior(z[0])
              - model.log_q(z[0], mu, std))
    assert torch.allclose(bound, direct, atol=1e-5)
    # and in expectation it is the closed-form ELBO
    torch.manual_seed(4)
    many = torch.stack([model.iwae_bound(x, 1) for _ in range(2000)]).mean(0)
    elbo = torch.stack([model.elbo_terms(x)["elbo"] for _ in range(2000)]).mean(0)
    assert torch.allclose(many, elbo, rtol=2e-3)


def test_k_sample_elbo_averages_the_log_weights_the_iwae_bound_log_mean_exps():
    """model.objective=elbo_k with k (Burda et al.'s VAE with k samples) trains on the mean of the same k log
    weights whose log-mean-exp is the IWAE bound: with the same draws, exactly that mean, and
    below the IWAE bound (Jensen), so the two objectives differ in the bound alone."""
    x = torch.rand(6, 1, 8, 8)
    vae_k, iwae = small_vae(objective={"name": "elbo_k", "k": 5}), small_vae(objective={"name": "iwae", "k": 5})  # the same weights (small_vae seeds)
    torch.manual_seed(7)
    w = vae_k.log_weights(x, 5)
    torch.manual_seed(7)
    loss_vae = vae_k.training_step((x,), 0)
    torch.manual_seed(7)
    loss_iwae = iwae.training_step((x,), 0)
    assert loss_vae.item() == pytest.approx(-w.mean().item(), rel=1e-6)
    assert loss_iwae.item() == pytest.approx(-(torch.logsumexp(w, 0) - math.log(5)).mean().item(),
                                             rel=1e-6)
    assert loss_iwae.item() < loss_vae.item()


def test_log_likelihood_estimate_is_at_least_the_elbo_and_tightens():
    model = small_vae()
    x = torch.rand(16, 1, 8, 8)
    torch.manual_seed(0)
    elbo = torch.stack([model.elbo_terms(x)["elbo"] for _ in range(200)]).mean()
    ll_10 = model.log_likelihood_estimate(x, 10).mean()
    ll_500 = model.log_likelihood_estimate(x, 500).mean()
    assert ll_10 > elbo and ll_500 > ll_10
    # chunked computation agrees with one pass (same samples)
    model.hparams.loglik_chunk = 16 * 7
    torch.manual_seed(5)
    chunked = model.log_likelihood_estimate(x, 50)
    model.hparams.loglik_chunk = 16 * 50
    torch.manual_seed(5)
    whole = model.log_likelihood_estimate(x, 50)
    assert chunked.shape == (16,) and torch.isfinite(chunked).all()
    assert abs(chunked.mean() - whole.mean()) < 0.05 * abs(whole.mean())


@pytest.mark.parametrize("kw, key", [
    ({"latent_dim": 0}, "model.latent_dim"),
    ({"objective": {"name": "elbo", "beta": -1.0}}, "model.objective.beta"),
    ({"likelihood": "poisson"}, "model.likelihood"),
    ({"likelihood": {"name": "gaussian", "std": 0}}, "model.likelihood.std"),
    ({"posterior": "laplace"}, "model.posterior"),
    ({"prior": "cauchy"}, "model.prior"),
    ({"objective": "iwea"}, "model.objective"),
    ({"objective": {"name": "elbo_k", "k": 0}}, "model.objective.k"),
    ({"objective": "named_elbo"}, "model.objective"),
    ({"net": "resnet"}, "model.net"),
    ({"net": {"name": "mlp", "hidden": []}}, "model.net.hidden"),
    ({"net": {"name": "mlp", "hidden": [500, 0]}}, "model.net.hidden"),
    ({"net": {"name": "mlp", "activation": "gelu"}}, "model.net.activation"),
    ({"loglik_samples": -1}, "model.loglik_samples"),
])
def test_bad_values_name_the_key(kw, key):
    with pytest.raises(ConfigError, match=rf"^{key}=.* is invalid; allowed: "):
        small_vae(**kw)


@pytest.mark.parametrize("kw, message", [
    ({"objective": {"name": "iwae", "beta": 2.0}}, "model.objective.beta is not a setting of iwae; allowed: k"),
    ({"net": {"name": "conv", "hidden": [5]}}, "model.net.hidden is not a setting of conv; allowed: base_channels"),
    ({"betta": 1}, "model.betta is not a setting; allowed: latent_dim, net, "),
])
def test_a_setting_the_component_lacks_is_refused_with_the_allowed_ones(kw, message):
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        small_vae(**kw)


def test_manifold_grid_walks_the_prior_quantiles():
    """The 2-D manifold (Kingma & Welling's Fig. 4): z_1 rises left to right, z_2 bottom to top,
    over the prior's 5%-95% quantiles; only a 2-D latent space has one."""
    model = small_vae(latent_dim=2)
    seen = []
    generate = model.generate
    model.generate = lambda n, z=None: seen.append(z) or generate(n, z=z)
    images = model.manifold(side=5)
    assert images.shape == (25, 1, 8, 8)
    z = seen[0].view(5, 5, 2)  # [row, column, unit]
    q = torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(0.05, 0.95, 5))
    assert torch.allclose(z[:, :, 0], q.expand(5, 5))               # every row: z_1 rising
    assert torch.allclose(z[:, :, 1], q.flip(0).view(5, 1).expand(5, 5))  # top row: z_2 highest
    assert torch.allclose(images, generate(25, z=seen[0]))
    real = torch.rand(8, 1, 8, 8)
    assert set(model.sample_grids(real)) == {"reconstruction", "manifold"}
    assert set(small_vae(latent_dim=3).sample_grids(real)) == {"reconstruction"}
    with pytest.raises(ValueError, match="latent_dim=2"):
        small_vae(latent_dim=3).manifold()


def test_mlp_arch_is_the_papers_network_and_trains_from_a_plain_checkpoint(smoke, tmp_path):
    """model.net=mlp: Kingma & Welling's MNIST network (one hidden layer of 500 tanh units each
    way) on 28x28 Fashion-MNIST; it learns, and its checkpoint rebuilds it through the registry."""
    from genlab.models import load_model
    from genlab.runs import read_summary

    model = VAE(image_shape=(1, 28, 28), latent_dim=20, net={"name": "mlp", "hidden": [500]})
    shapes = [tuple(p.shape) for p in model.encoder.parameters()] + \
        [tuple(p.shape) for p in model.decoder.parameters()]
    assert shapes == [(500, 784), (500,), (40, 500), (40,), (500, 20), (500,), (784, 500), (784,)]
    assert sum(isinstance(m, torch.nn.Tanh) for m in model.modules()) == 2
    assert model.decode(torch.zeros(3, 20)).shape == (3, 1, 28, 28)

    run = smoke(tmp_path / "run", "model=vae", "model/net=mlp", "model.net.hidden=[64,32]",
                "model.net.activation=relu", "trainer.max_epochs=2")
    summary = read_summary(run)
    loaded, _ = load_model(summary["best_checkpoint"])
    assert loaded.hparams.net == {"name": "mlp", "hidden": [64, 32], "activation": "relu"}
    assert [m.out_features for m in loaded.encoder.modules() if isinstance(m, torch.nn.Linear)] == [64, 32, 32]
    assert sum(isinstance(m, torch.nn.ReLU) for m in loaded.modules()) == 4
    with open(run / "metrics.csv") as f:
        val = [float(r["val/elbo"]) for r in csv.DictReader(f) if r.get("val/elbo")]
    assert len(val) == 3 and val[1] > val[0], val  # two epochs' validations and the final one: it learns
    assert math.isfinite(summary["test/elbo"])


def test_a_checkpoint_from_before_components_is_refused_in_one_line(tmp_path):
    """A VAE checkpoint with the flat hyper-parameters genlab wrote before its families were
    composed (arch, beta, iwae_k, ...) is refused with one line that says so."""
    from genlab.models import load_model
    from genlab.runs import RunReadError

    model = small_vae()
    old = {"image_shape": [1, 8, 8], "latent_dim": 3, "beta": 1.0, "likelihood": "bernoulli", "std": 0.1,
           "learn_std": False, "eps": "gaussian", "iwae_k": 1, "elbo_k": 1, "arch": "conv", "base_channels": 8}
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": old,
                "genlab": {"family": "vae", "data": "digits", "data_kwargs": {}}}, tmp_path / "old.ckpt")
    with pytest.raises(RunReadError) as e:
        load_model(tmp_path / "old.ckpt")
    message = str(e.value)
    assert "\n" not in message and "unknown hyper-parameter 'beta' of family 'vae'" in message
    assert "before its families were composed of components" in message
