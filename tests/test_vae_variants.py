"""VAE variants as options: uniform reparameterisation noise, the importance-weighted bound, and
the test log-likelihood against the ELBO."""

from __future__ import annotations

import csv
import math
import re

import pytest
import torch

from genlab import runs
from genlab.data import DigitsDataModule
from genlab.models.vae import VAE

SQRT3 = math.sqrt(3.0)
LOG_2PI = math.log(2 * math.pi)
# KL(Uniform || N(0,1)) - KL(N(mu, std^2) || N(0,1)) at equal mean and variance, per dimension: the
# entropy gap 0.5 log(2 pi e) - log(2 sqrt(3)) = 0.5 log(2 pi e / 12) ~ 0.1765 nats (the Gaussian
# has the largest entropy for a given variance)
ENTROPY_GAP = 0.5 * math.log(2 * math.pi * math.e / 12)


@pytest.fixture(scope="module")
def digits():
    dm = DigitsDataModule(val_size=150)
    dm.setup()
    return dm.images("train", 128)


def uniform_kl(mu, std):
    """KL(Uniform(mu +- sqrt(3) std) || N(0, 1)) per dimension, in closed form."""
    return -torch.log(2 * SQRT3 * std) + 0.5 * LOG_2PI + 0.5 * (mu**2 + std**2)


def test_uniform_reparameterised_kl_gradient_is_unbiased():
    """eps=uniform: the Monte-Carlo KL the VAE trains on (log q(z) - log p(z) at z = mu + std*e,
    e ~ U(-sqrt3, sqrt3)) has the exact KL's value and gradient in expectation.

    Per-sample gradients: d/dmu = z, with variance std^2; d/dstd = -1/std + z e, with variance
    mu^2 + 0.8 std^2 (Var(e) = 1, Var(e^2) = E e^4 - 1 = 9/5 - 1, Cov(e, e^2) = 0). The tolerance
    is 5 standard errors of the mean over N samples."""
    torch.manual_seed(0)
    vae = VAE((1, 8, 8), posterior="uniform")
    mu = torch.tensor([0.3, -1.2, 0.0], dtype=torch.float64, requires_grad=True)
    std = torch.tensor([0.5, 1.5, 0.2], dtype=torch.float64, requires_grad=True)
    n = 400_000
    z = vae.sample_z(mu, std, k=n)  # [n, 3]
    e = ((z - mu) / std).detach()
    assert e.abs().max() <= SQRT3 + 1e-9 and e.var(0).sub(1).abs().max() < 0.01
    estimate = (vae.log_q(z, mu, std) - vae.log_prior(z)).mean()
    grad_mu, grad_std = torch.autograd.grad(estimate, (mu, std))

    exact = uniform_kl(mu, std).sum()
    exact_mu, exact_std = torch.autograd.grad(exact, (mu, std))
    m, s = mu.detach(), std.detach()
    assert torch.allclose(exact_mu, m) and torch.allclose(exact_std, s - 1 / s)  # d/dstd: std - 1/std
    se_mu, se_std = s / math.sqrt(n), torch.sqrt(m**2 + 0.8 * s**2) / math.sqrt(n)
    assert ((grad_mu - exact_mu).abs() < 5 * se_mu).all(), (grad_mu, exact_mu)
    assert ((grad_std - exact_std).abs() < 5 * se_std).all(), (grad_std, exact_std)
    # the value too: its per-sample spread is 0.5 * sum_d Var(z_d^2)
    assert abs(estimate.item() - exact.item()) < 0.01


def test_uniform_kl_is_its_own_family_not_the_gaussian_closed_form(digits):
    """The VAE's uniform KL averages to the uniform posterior's exact KL, which is the Gaussian
    closed form plus the entropy gap in every latent dimension: a different posterior family."""
    torch.manual_seed(0)
    vae = VAE((1, 8, 8), posterior="uniform", latent_dim=16).eval()
    with torch.no_grad():
        mu, std = vae.posterior(digits)
        draws = torch.stack([vae.elbo_terms(digits)["kl"] for _ in range(50)])  # [50, B]
    mc = draws.mean()
    se = draws.std() / math.sqrt(draws.numel())
    exact_uniform = uniform_kl(mu, std).sum(1).mean()
    gaussian = (0.5 * (mu**2 + std**2 - 1 - 2 * std.log())).sum(1).mean()
    assert abs(mc - exact_uniform) < 5 * se + 1e-4
    assert (mc - gaussian).item() == pytest.approx(16 * ENTROPY_GAP, abs=5 * se.item() + 1e-3)


@pytest.mark.parametrize("eps", ["gaussian", "uniform"])
def test_iwae_bound_is_above_the_elbo_and_grows_with_k(digits, eps):
    """E[L_k] is non-decreasing in k and L_1 is the ELBO (Burda et al. 2016), on an untrained
    model. Differences are taken per image (paired), and must exceed 4 standard errors."""
    torch.manual_seed(0)
    vae = VAE((1, 8, 8), posterior=eps).eval()
    repeats = 8
    with torch.no_grad():
        elbo = torch.stack([vae.elbo_terms(digits)["elbo"] for _ in range(repeats)]).mean(0)
        bound = {k: torch.stack([vae.iwae_bound(digits, k) for _ in range(repeats)]).mean(0)
                 for k in (1, 5, 50)}

    def mean_se(d):
        return d.mean().item(), d.std().item() / math.sqrt(len(d))

    same, se = mean_se(bound[1] - elbo)
    assert abs(same) < 4 * se  # k=1 is the ELBO (with a sampled KL)
    for lo, hi in [(elbo, bound[5]), (bound[5], bound[50])]:
        gain, se = mean_se(hi - lo)
        assert gain > 4 * se, (gain, se)


def test_an_iwae_run_chooses_its_checkpoint_by_its_own_k_sample_bound(smoke, tmp_path):
    """model.objective=iwae alone: the VAE's objective follows the bound it trains on (val/iwae)."""
    run = smoke(tmp_path, "data=digits", "model/objective=iwae", "model.objective.k=5",
                "callbacks.evaluation=null", "trainer.max_epochs=3")
    s = runs.read_summary(run)
    assert s["status"] == "ok" and math.isfinite(s["test/elbo"]) and s["objective"] == "val/iwae"
    text = (run / "metrics.csv").read_text()
    assert "train/loss" in text and "train/elbo" not in text  # the IWAE loss is not the ELBO
    with open(run / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val/iwae")]
    per_epoch = {int(r["epoch"]): float(r["val/iwae"]) for r in rows[:3]}
    assert len(rows) == 3 + 1 and sorted(per_epoch) == [0, 1, 2]  # each epoch, then the best's
    best = max(per_epoch, key=per_epoch.get)
    assert s["best_checkpoint"].endswith(f"best-epoch{best:03d}.ckpt")
    # the best checkpoint's validation draws the same noise: the same value as in its epoch
    assert s["val/iwae"] == pytest.approx(per_epoch[best], rel=1e-6)
    # the 5-sample bound of the same model on the same images is above its ELBO
    assert s["val/iwae"] > s["val/elbo"]


@pytest.mark.parametrize(("overrides", "message"), [
    (["model/objective=iwae", "objective.metric=val/elbo"], "objective.metric='val/elbo' is invalid; allowed: val/iwae (model=vae's objective then) "
                         "or another metric than val/elbo: model.objective=iwae trains the 5-sample bound"),
    (["objective.metric=val/iwae"], "objective.metric='val/iwae' is invalid; allowed: a metric the run logs; "
                         "val/iwae needs model.objective=iwae"),
])
def test_the_checkpoint_metric_must_be_the_bound_the_run_trains_on(smoke, tmp_path, overrides, message):
    from genlab.config import ConfigError

    with pytest.raises(ConfigError, match=re.escape(message)):
        smoke(tmp_path, "data=digits", "callbacks.evaluation=null", *overrides)
    assert runs.read_summary(tmp_path)["status"] == "failed"


@pytest.mark.parametrize(("arm", "metric"), [("vae_k5", "val/elbo"), ("iwae_k5", "val/iwae"),
                                             ("iwae_k50", "val/iwae")])
def test_iwae_table_arms_checkpoint_by_their_own_bound(tmp_path, arm, metric):
    from conftest import make_cfg

    cfg = make_cfg(tmp_path, "experiment=iwae_table", f"arm={arm}")
    assert cfg.objective.metric == metric and cfg.callbacks.checkpoint.monitor == metric


def test_training_on_the_k_sample_elbo(smoke, tmp_path):
    run = smoke(tmp_path, "data=digits", "model/objective=elbo_k", "callbacks.evaluation=null")
    s = runs.read_summary(run)
    assert s["status"] == "ok" and math.isfinite(s["test/elbo"]) and math.isfinite(s["val/elbo"])
    with open(run / "metrics.csv", newline="") as f:
        logged = [r for r in csv.DictReader(f) if r.get("train/loss")]
    # the loss is the negative k-sample ELBO, and that is what train/elbo logs
    assert logged and all(float(r["train/elbo"]) == pytest.approx(-float(r["train/loss"]), rel=1e-5)
                          for r in logged)


def test_loglik_is_above_the_elbo_on_the_same_images(smoke, tmp_path):
    run = smoke(tmp_path, "data=digits", "model.loglik_samples=50", "callbacks.evaluation=null")
    s = runs.read_summary(run)
    assert s["status"] == "ok"
    assert s["test/loglik"] >= s["test/loglik_elbo"], (s["test/loglik"], s["test/loglik_elbo"])


@pytest.mark.parametrize("family", ["vae", "dcgan", "dae", "rbm", "restoration_gan", "deep_mlp"])
def test_the_loglik_settings_are_the_vaes_own(tmp_path, family):
    """model.loglik_* live in conf/model/vae.yaml; debug=smoke shrinks them through
    debug/model/smoke_vae.yaml, so no other family's constructor ever sees them."""
    from conftest import make_cfg

    from genlab.train import build

    cfg = make_cfg(tmp_path, "debug=smoke", f"model={family}")
    shrunk = {k: cfg.model.get(k) for k in ("loglik_samples", "loglik_images")}
    assert shrunk == ({"loglik_samples": 8, "loglik_images": 32} if family == "vae"
                      else {"loglik_samples": None, "loglik_images": None})
    build(cfg.model, image_shape=[1, 28, 28], _convert_="all")  # every key is a constructor argument
    if family == "vae":
        full = make_cfg(tmp_path, "model=vae").model
        assert (full.loglik_samples, full.loglik_images) == (1000, 1000)
        # a preset's sizes, and smoke's on top of them
        assert make_cfg(tmp_path, "experiment=iwae_table").model.loglik_samples == 5000
        assert make_cfg(tmp_path, "experiment=iwae_table", "debug=smoke").model.loglik_samples == 8
