"""Latent diagnostics against answers known in closed form."""

import math

import pytest
import torch

from genlab.metrics.prior import ExPostGMM, active_units, kl_aggregate_posterior, mmd


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("kernel", ["imq", "rbf"])
def test_mmd_zero_for_one_distribution_and_positive_for_a_shift(kernel):
    g = gen()
    a, b = torch.randn(400, 8, generator=g), torch.randn(400, 8, generator=g)
    same = mmd(a, b, kernel)
    shifted = mmd(a, b + 0.5, kernel)
    assert abs(same) < 0.01
    assert shifted > 0.1 and shifted > 20 * abs(same)
    assert mmd(b + 0.5, a, kernel) == pytest.approx(shifted, rel=1e-9)  # symmetric


def test_mmd_is_unbiased():
    # the U-statistic's mean over independent repeats is 0 on one distribution (a biased V-statistic
    # would sit at a positive offset of order 1/n)
    g = gen(1)
    values = torch.tensor([mmd(torch.randn(60, 4, generator=g), torch.randn(60, 4, generator=g))
                           for _ in range(40)])
    se = values.std() / math.sqrt(len(values))
    assert abs(values.mean()) < 3 * se
    v_offset = 2 * 7 / 60  # each scale's kernel is 1 at distance 0: the V-statistic adds ~2*7/n
    assert abs(values.mean()) < 0.05 * v_offset


def _posteriors(n, d, s, g):
    """Means ~ N(0, (1 - s^2) I) and posterior std s: the aggregate posterior is exactly N(0, I)."""
    mu = torch.randn(n, d, generator=g) * math.sqrt(1 - s**2)
    return mu, torch.full((n, d), 2 * math.log(s))


def test_kl_aggregate_posterior_known_answers():
    d, s = 2, 0.2
    mu, logvar = _posteriors(10_000, d, s, gen(2))
    assert abs(kl_aggregate_posterior(mu, logvar, n_samples=3000)) < 0.03
    # shifted by delta: q = N(delta, I), KL = |delta|^2 / 2
    delta = torch.tensor([1.0, -0.5])
    assert kl_aggregate_posterior(mu + delta, logvar, n_samples=3000) == pytest.approx(
        0.5 * float(delta @ delta), abs=0.08)
    # widened: q = N(0, v I), KL = d/2 (v - 1 - log v)
    c = 1.5
    v = c**2 * (1 - s**2) + s**2
    assert kl_aggregate_posterior(c * mu, logvar, n_samples=3000) == pytest.approx(
        d / 2 * (v - 1 - math.log(v)), abs=0.08)


def test_kl_aggregate_posterior_matches_a_direct_mixture_density():
    # small enough to evaluate the mixture density with torch.distributions, draw for draw
    g = gen(3)
    mu, logvar = torch.randn(50, 3, generator=g), 0.3 * torch.randn(50, 3, generator=g)
    n_samples = 200
    ours = kl_aggregate_posterior(mu, logvar, n_samples=n_samples, seed=7, chunk=17)
    g = torch.Generator().manual_seed(7)  # the same draws as the function makes
    which = torch.randint(50, (n_samples,), generator=g)
    mu64, lv64 = mu.double(), logvar.double()
    z = mu64[which] + torch.exp(0.5 * lv64[which]) * torch.randn(n_samples, 3, generator=g, dtype=torch.float64)
    comp = torch.distributions.Independent(torch.distributions.Normal(mu64, torch.exp(0.5 * lv64)), 1)
    mix = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(torch.ones(50, dtype=torch.float64)), comp)
    prior = torch.distributions.Independent(
        torch.distributions.Normal(torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)), 1)
    direct = float((mix.log_prob(z) - prior.log_prob(z)).mean())
    assert ours == pytest.approx(direct, rel=1e-9)


def test_active_units_counts_the_dimensions_that_vary():
    g = gen(4)
    mu = 0.01 * torch.randn(2000, 10, generator=g)  # variance 1e-4: inactive
    for dim in (0, 3, 7):
        mu[:, dim] = torch.randn(2000, generator=g)
    assert active_units(mu) == 3
    assert active_units(mu, threshold=1e-5) == 10


def test_ex_post_gmm_samples_the_code_distribution():
    g = gen(5)
    centres = torch.tensor([[-3.0, 0.0], [3.0, 1.0]])
    codes = centres[torch.randint(2, (2000,), generator=g)] + 0.5 * torch.randn(2000, 2, generator=g)
    fresh = centres[torch.randint(2, (500,), generator=g)] + 0.5 * torch.randn(500, 2, generator=g)
    gmm = ExPostGMM(n_components=2).fit(codes)
    z = gmm.sample(500)
    assert z.shape == (500, 2) and z.dtype == codes.dtype
    to_prior = mmd(torch.randn(500, 2, generator=g), fresh)  # the prior is far from the codes
    assert to_prior > 0.1
    assert abs(mmd(z, fresh)) < 0.05 * to_prior
    # shuffled: the first 50 draws come from both components; a second call draws new points
    assert (z[:50, 0] < 0).any() and (z[:50, 0] > 0).any()
    assert not torch.equal(z, gmm.sample(500))
    assert torch.isfinite(gmm.log_prob(fresh)).all()
