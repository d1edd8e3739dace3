"""Latent diagnostics against answers known in closed form."""

import math

import numpy as np
import pytest
import torch
from scipy.special import i0e, ndtr

from genlab.metrics.prior import (
    ExPostGMM,
    active_units,
    kl_aggregate_bounds,
    kl_aggregate_posterior,
    mmd,
)


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
    # against the prior the aggregate is (a learned prior's log density): KL 0 again
    shifted = lambda z: -0.5 * ((z - delta.double()) ** 2).sum(-1) - d / 2 * math.log(2 * math.pi)  # noqa: E731
    assert abs(kl_aggregate_posterior(mu + delta, logvar, n_samples=3000, log_prior=shifted)) < 0.03


def test_kl_aggregate_bounds_match_direct_mixture_densities():
    # small enough to evaluate the mixtures with torch.distributions, draw for draw: the upper
    # estimate scores each draw with all 50 posteriors, the lower with the other 49
    g = gen(3)
    mu, logvar = torch.randn(50, 3, generator=g), 0.3 * torch.randn(50, 3, generator=g)
    n_samples = 200
    lower, upper = kl_aggregate_bounds(mu, logvar, n_samples=n_samples, seed=7, chunk=17)
    g = torch.Generator().manual_seed(7)  # the same draws as the function makes
    which = torch.randint(50, (n_samples,), generator=g)
    mu64, lv64 = mu.double(), logvar.double()
    z = mu64[which] + torch.exp(0.5 * lv64[which]) * torch.randn(n_samples, 3, generator=g, dtype=torch.float64)

    def mixture(keep):
        comp = torch.distributions.Independent(
            torch.distributions.Normal(mu64[keep], torch.exp(0.5 * lv64[keep])), 1)
        return torch.distributions.MixtureSameFamily(
            torch.distributions.Categorical(torch.ones(int(keep.sum()), dtype=torch.float64)), comp)

    prior = torch.distributions.Independent(
        torch.distributions.Normal(torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)), 1)
    everyone = torch.ones(50, dtype=torch.bool)
    assert upper == pytest.approx(float((mixture(everyone).log_prob(z) - prior.log_prob(z)).mean()), rel=1e-9)
    left_out = torch.stack([mixture(torch.arange(50) != n).log_prob(z[i]) for i, n in enumerate(which)])
    assert lower == pytest.approx(float((left_out - prior.log_prob(z)).mean()), rel=1e-9)
    assert lower < upper


def _kl_by_integration(log_q, grid, weight, log_p):
    """KL(q || p) = integral of q (log q - log p), by the trapezoid rule on `grid` (weight: the
    measure's density there, e.g. 2 pi r for a radial integral)."""
    lq = log_q(grid)
    return float(np.trapezoid(weight * np.exp(lq) * (lq - log_p(grid)), grid))


def test_kl_aggregate_in_one_dimension_matches_numerical_integration():
    # means uniform on [0, 2], posterior std 0.3: q(z) = (Phi(z / s) - Phi((z - 2) / s)) / 2.
    # The codes sit at the uniform's quantiles, so their mixture is q up to the Monte-Carlo error
    # of the estimate itself (about 0.01 nats with 4000 draws)
    s, n = 0.3, 4000
    mu = 2 * ((torch.arange(n) + 0.5) / n).unsqueeze(1)
    logvar = torch.full((n, 1), 2 * math.log(s))
    def log_q(z):  # the same difference written with the smaller tails on either side of 1
        return np.log(np.where(z < 1, ndtr(z / s) - ndtr((z - 2) / s),
                               ndtr((2 - z) / s) - ndtr(-z / s)) / 2)

    exact = _kl_by_integration(log_q, np.linspace(-2.5, 4.5, 20001), 1.0,
                               lambda z: -0.5 * z**2 - 0.5 * math.log(2 * math.pi))
    assert 0.5 < exact < 2  # a KL far from 0
    lower, upper = kl_aggregate_bounds(mu, logvar, n_samples=4000, seed=1)
    assert upper - lower < 0.01
    assert kl_aggregate_posterior(mu, logvar, n_samples=4000, seed=1) == pytest.approx(exact, abs=0.04)


def test_kl_aggregate_in_two_dimensions_matches_numerical_integration():
    # means on a ring of radius r (a 2-D VAE's aggregate posterior in reparam_uniform looks so),
    # posterior std s: q is radial, q(rho) = exp(-(rho^2 + r^2) / 2 s^2) I0(r rho / s^2) / (2 pi s^2)
    r, s, n = 1.5, 0.3, 4000
    angle = 2 * math.pi * (torch.arange(n) + 0.5) / n  # evenly around the ring
    mu = r * torch.stack([angle.cos(), angle.sin()], dim=1)
    logvar = torch.full((n, 2), 2 * math.log(s))

    def log_q(rho):  # log I0(x) = log i0e(x) + x
        x = r * rho / s**2
        return -(rho**2 + r**2) / (2 * s**2) + np.log(i0e(x)) + x - math.log(2 * math.pi * s**2)

    grid = np.linspace(1e-6, 6, 20001)
    exact = _kl_by_integration(log_q, grid, 2 * math.pi * grid,
                               lambda rho: -0.5 * rho**2 - math.log(2 * math.pi))
    assert 0.5 < exact < 3
    assert kl_aggregate_posterior(mu, logvar, n_samples=4000, seed=2) == pytest.approx(exact, abs=0.04)


def test_kl_aggregate_refuses_where_the_codes_cannot_tell():
    # 16 dimensions, posterior std 0.33 (a KL term of 16 * ln(1 / 0.33) = 17.7 nats, the
    # quickstart's size), aggregate exactly N(0, I): the true KL is 0, yet the in-sample estimate
    # is near 17.7 - ln 4000 = 9.4 and the leave-one-out one far below 0
    mu, logvar = _posteriors(4000, 16, 0.33, gen(9))
    lower, upper = kl_aggregate_bounds(mu, logvar, n_samples=1000)
    assert lower < -5 and upper == pytest.approx(16 * math.log(1 / 0.33) - math.log(4000), abs=0.5)
    with pytest.raises(ValueError, match=r"4000 codes in 16 dimensions cannot tell the aggregate "
                                         r"KL: .* bracket it at \[-\d+.*, 9\.\d+\] nats, wider than 0.1"):
        kl_aggregate_posterior(mu, logvar, n_samples=1000)
    # wide posteriors (std 0.9) in the same 16 dimensions: the bracket closes around 0
    mu, logvar = _posteriors(4000, 16, 0.9, gen(10))
    assert abs(kl_aggregate_posterior(mu, logvar, n_samples=1000)) < 0.03


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
