"""Learned priors of the VAE (genlab.models.priors: vamp, mog) against answers known by hand."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import make_cfg

from genlab import runs
from genlab.config import ConfigError
from genlab.models import VAE, build_model, load_model
from genlab.models.priors import PRIORS

SHAPE = (1, 8, 8)


def vae(prior, posterior="gaussian", latent_dim=3, seed=0) -> VAE:
    torch.manual_seed(seed)
    return VAE(list(SHAPE), latent_dim=latent_dim, prior=prior, posterior=posterior, loglik_samples=0)


def mog(components, latent_dim, seed=0):
    torch.manual_seed(seed)
    return PRIORS.build({"name": "mog", "components": components}, "model.prior", latent_dim=latent_dim)


def set_mog(prior, means, stds, weights):
    with torch.no_grad():
        prior.means.copy_(torch.as_tensor(means, dtype=torch.float32))
        prior.log_stds.copy_(torch.as_tensor(stds, dtype=torch.float32).log())
        prior.logits.copy_(torch.as_tensor(weights, dtype=torch.float32).log())


def test_mog_with_one_component_is_that_gaussian():
    p = mog(1, 2)
    set_mog(p, [[0.5, -1.0]], [[2.0, 0.3]], [1.0])
    z = torch.randn(50, 2)
    normal = torch.distributions.Normal(torch.tensor([0.5, -1.0]), torch.tensor([2.0, 0.3]))
    assert torch.allclose(p.log_prob(z), normal.log_prob(z).sum(-1), atol=1e-5)


def test_mog_log_prob_is_the_sum_over_its_components():
    p = mog(3, 2)
    means, stds, w = [[0.0, 1.0], [2.0, -1.0], [-3.0, 0.5]], [[1.0, 0.5], [0.2, 2.0], [1.5, 1.5]], [0.2, 0.5, 0.3]
    set_mog(p, means, stds, w)
    z = torch.tensor([[0.1, 0.9], [2.0, -1.2], [-3.0, 0.0], [40.0, -40.0]])  # the last: far in the tails
    got = p.log_prob(z)
    for i, zi in enumerate(z.tolist()):
        terms = [math.log(w[k]) + sum(-0.5 * ((zi[d] - means[k][d]) / stds[k][d]) ** 2 - math.log(stds[k][d])
                                      - 0.5 * math.log(2 * math.pi) for d in range(2)) for k in range(3)]
        top = max(terms)  # a sum of exponentials by hand, scaled so that it does not underflow
        brute = top + math.log(sum(math.exp(t - top) for t in terms))
        assert got[i].item() == pytest.approx(brute, rel=1e-5), i
    assert torch.isfinite(got).all()  # logsumexp: finite where every component underflows


def test_mog_samples_have_the_mixtures_mean_and_variance():
    p = mog(3, 2)
    means, stds, w = [[0.0, 1.0], [2.0, -1.0], [-3.0, 0.5]], [[1.0, 0.5], [0.2, 2.0], [1.5, 1.5]], [0.2, 0.5, 0.3]
    set_mog(p, means, stds, w)
    torch.manual_seed(1)
    with torch.no_grad():
        z = p.sample(200_000)
    m, s, pi = torch.tensor(means), torch.tensor(stds), torch.tensor(w).unsqueeze(1)
    mean = (pi * m).sum(0)
    var = (pi * (s**2 + m**2)).sum(0) - mean**2
    assert torch.allclose(z.mean(0), mean, atol=0.03)
    assert torch.allclose(z.var(0), var, rtol=0.03)


def test_vamp_with_the_uniform_posterior_is_refused_in_one_line():
    """Its components would be boxes: a posterior draw outside all of them has an infinite KL."""
    with pytest.raises(ConfigError, match=r"^model.prior='vamp' is invalid; allowed: standard_normal \| mog "
                                          r"with model.posterior=uniform"):
        vae({"name": "vamp", "components": 4}, "uniform")


@pytest.mark.parametrize("posterior", ["gaussian"])
def test_vamp_log_prob_is_the_mean_of_the_pseudo_inputs_posteriors(posterior):
    """(1/K) sum_k q(z | u_k) by hand, with the VAE's own encoder and posterior family (a
    Gaussian density; the uniform posterior's boxes are refused with the VampPrior)."""
    model = vae({"name": "vamp", "components": 4}, posterior)
    u = model.prior.inputs()
    assert u.shape == (4, *SHAPE) and 0 <= u.min() and u.max() <= 1
    mu, std = (t.double() for t in model.posterior(u))
    z = (mu[:2] + 0.3 * std[:2]).float()  # inside the first two components' boxes (uniform)
    z = torch.cat([z, torch.randn(3, 3)])
    for i, zi in enumerate(z.double()):
        if posterior == "gaussian":
            dens = torch.exp(-0.5 * ((zi - mu) / std) ** 2 - std.log() - 0.5 * math.log(2 * math.pi)).prod(1)
        else:
            half = math.sqrt(3) * std
            dens = ((zi - mu).abs() <= half).all(1).double() / (2 * half).prod(1)
        expected = dens.mean().log().item()
        got = model.prior.log_prob(zi.float().unsqueeze(0)).item()
        assert got == pytest.approx(expected, rel=1e-4, abs=1e-4) or (expected == got == -math.inf), i
    # any batch shape: [k, B, D] as the importance-weighted bounds score it
    assert model.prior.log_prob(z.view(5, 1, 3).expand(5, 2, 3)).shape == (5, 2)


def test_vamp_samples_come_from_the_pseudo_inputs_posteriors():
    model = vae({"name": "vamp", "components": 1})
    with torch.no_grad():
        mu, std = model.posterior(model.prior.inputs())
        torch.manual_seed(2)
        z = model.prior.sample(50_000)
    assert torch.allclose(z.mean(0), mu[0], atol=0.03 * std[0].max().item())
    assert torch.allclose(z.std(0), std[0], rtol=0.03)


@pytest.mark.parametrize("prior", ["standard_normal", "vamp", "mog"])
def test_the_training_kl_is_closed_form_only_for_the_standard_normal(prior):
    model = vae(prior)
    x = torch.rand(6, *SHAPE)
    kl = model.elbo_terms(x, generator=torch.Generator().manual_seed(3))["kl"]
    mu, std = model.posterior(x)
    z = model.sample_z(mu, std, generator=torch.Generator().manual_seed(3))  # the same draw
    monte_carlo = model.log_q(z, mu, std) - model.log_prior(z)
    closed = 0.5 * (mu**2 + std**2 - 1 - 2 * std.log()).sum(1)
    assert model.prior.kl_from_gaussian(mu, std) is None or prior == "standard_normal"
    assert torch.allclose(kl, closed if prior == "standard_normal" else monte_carlo, atol=1e-5)
    assert not torch.allclose(kl, monte_carlo if prior == "standard_normal" else closed, atol=1e-3)


@pytest.mark.parametrize("prior", ["vamp", "mog"])
def test_one_training_step_moves_the_priors_parameters(prior):
    model = vae(prior)
    opt = model.configure_optimizers()
    in_optimizer = {id(p) for group in opt.param_groups for p in group["params"]}
    params = dict(model.prior.named_parameters())
    assert params and all(id(p) in in_optimizer for p in params.values())
    before = {n: p.detach().clone() for n, p in params.items()}
    loss = model.training_step((torch.rand(8, *SHAPE), None, torch.arange(8)), 0)
    opt.zero_grad()
    loss.backward()
    for n, p in params.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, n
    opt.step()
    assert all(not torch.equal(before[n], p) for n, p in params.items())


def test_a_learned_prior_is_chosen_by_name_or_by_its_group(tmp_path):
    vamp = make_cfg(tmp_path, "model.prior=vamp").model
    assert type(build_model(vamp, SHAPE).prior).__name__ == "VampPrior"
    node = make_cfg(tmp_path, "model/prior=mog", "model.prior.components=20").model
    model = build_model(node, SHAPE)
    assert model.prior.means.shape == (20, 16) and model.hparams.prior["components"] == 20


@pytest.mark.parametrize("overrides", [["model/prior=mog", "model.prior.components=0"],
                                       ["model/prior=vamp", "model.prior.components=0"]])
def test_bad_prior_settings_are_refused_in_one_line(tmp_path, overrides):
    with pytest.raises(ConfigError) as e:
        build_model(make_cfg(tmp_path, *overrides).model, SHAPE)
    assert str(e.value) == "model.prior.components=0 is invalid; allowed: a positive integer"


def test_the_standard_normal_has_no_weights_and_draws_from_the_training_stream():
    model = vae("standard_normal")
    assert list(model.prior.parameters()) == [] and model.prior.config() == {"name": "standard_normal"}
    torch.manual_seed(4)
    expected = torch.randn(5, 3)
    torch.manual_seed(4)
    assert torch.equal(model.prior.sample(5), expected)


def test_vamp_smoke_run_trains_writes_a_finite_loglik_and_reloads(smoke, tmp_path):
    """genlab-train debug=smoke model.prior=vamp data=digits; its checkpoint reloads through
    load_model with the same pseudo-inputs."""
    run = smoke(tmp_path / "vamp", "model.prior=vamp", "data=digits")
    s = runs.read_summary(run)
    assert s["status"] == "ok", s
    for key in ("test/loglik", "test/elbo", "val/kl"):
        assert math.isfinite(s[key]), key
    ckpt = run / "checkpoints" / "last.ckpt"
    model, _ = load_model(ckpt)
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    assert isinstance(model.prior, PRIORS["vamp"]) and model.hparams.prior["name"] == "vamp"
    assert torch.equal(model.prior.pseudo_inputs, state["prior.pseudo_inputs"])
    assert model.prior.log_prob(torch.zeros(2, 16)).isfinite().all()


def test_a_mog_checkpoint_reloads_with_its_weights(tmp_path):
    model = vae({"name": "mog", "components": 5})
    with torch.no_grad():
        model.prior.means.add_(1.0)
    path = tmp_path / "mog.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                "genlab": {"family": "vae", "data": None, "data_kwargs": {}}}, path)
    again, _ = load_model(Path(path))
    for name, p in model.prior.state_dict().items():
        assert torch.equal(again.prior.state_dict()[name], p), name


@pytest.mark.parametrize("arm", ["standard_normal", "vamp", "mog"])
def test_prior_hole_arms_compose_and_build(tmp_path, arm):
    """make study NAME=prior_hole SMOKE=1, up to the model: each arm's prior; the standard_normal
    arm's model config is the one the study's original runs had."""
    cfg = make_cfg(tmp_path, "experiment=prior_hole", "debug=smoke", f"arm={arm}")
    model = build_model(cfg.model, SHAPE)
    assert model.prior.registry_name == arm
    if arm == "standard_normal":
        assert cfg.model.prior == {"name": "standard_normal"}
    if arm == "vamp":
        assert model.prior.settings.components == 500
