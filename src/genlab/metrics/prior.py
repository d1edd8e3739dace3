"""Latent-space diagnostics: how the encoder's codes sit against the prior p(z) = N(0, I).

- `mmd(z_q, z_p)`: unbiased MMD^2 between two samples (e.g. codes vs prior draws), as in WAE.
- `kl_aggregate_posterior(mu, logvar)`: KL(q(z) || N(0, I)) of the aggregate posterior, in nats,
  where the codes can tell it; `kl_aggregate_bounds` brackets it.
- `active_units(mu)`: how many latent dimensions the encoder uses (Burda et al. 2016).
- `ExPostGMM`: a Gaussian mixture fitted to codes after training, to sample from instead of the
  prior (Ghosh et al. 2020, "From variational to deterministic autoencoders").

Codes are float tensors [N, D]; `mu` and `logvar` are the diagonal-Gaussian posterior parameters
q(z|x_n) = N(mu_n, diag(exp(logvar_n))) of N data points.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from genlab.config import require_choice

# MMD kernel scales, multiplied by 2 * D (the mean squared distance between two N(0, I) draws), so
# scale 1 is "the prior's own width"; summing several scales keeps the test sensitive both to
# shifts of the bulk and to differences in the tails (Tolstikhin et al. 2018, WAE).
MMD_SCALES = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


def mmd(z_q: Tensor, z_p: Tensor, kernel: str = "imq", scales: Sequence[float] = MMD_SCALES) -> float:
    """Unbiased estimate of MMD^2 between samples z_q [n, D] and z_p [m, D] (n, m >= 2).

    Kernel, summed over the scales s with C = 2 * D * s:
      imq: k(x, y) = C / (C + |x - y|^2)      rbf: k(x, y) = exp(-|x - y|^2 / C)
    Both are characteristic, so MMD^2 = 0 exactly when the distributions are equal. The estimate
    leaves out the i = j terms (a U-statistic): its expectation is the true MMD^2, so on samples of
    one distribution it scatters around 0 and can be slightly negative. Unitless; higher means
    farther apart.
    """
    require_choice(kernel, "kernel", ("imq", "rbf"))
    x, y = z_q.detach().double(), z_p.detach().double()
    n, m, dim = len(x), len(y), x.shape[1]

    def k(a: Tensor, b: Tensor) -> Tensor:
        d2 = torch.cdist(a, b).pow(2)
        out = torch.zeros_like(d2)
        for s in scales:
            c = 2.0 * dim * s
            out += c / (c + d2) if kernel == "imq" else torch.exp(-d2 / c)
        return out

    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    xx = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    yy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(xx + yy - 2 * kxy.mean())


def standard_normal_log_prob(z: Tensor) -> Tensor:
    """log N(z; 0, I) summed over the last dimension."""
    return -0.5 * (z**2).sum(-1) - 0.5 * z.shape[-1] * math.log(2 * math.pi)


def kl_aggregate_bounds(mu: Tensor, logvar: Tensor, n_samples: int = 2000, seed: int = 0,
                        chunk: int = 256, log_prior=standard_normal_log_prob) -> tuple[float, float]:
    """Two Monte-Carlo estimates of KL(q(z) || p(z)) in nats, (lower, upper), that bracket the
    aggregate posterior's KL in expectation; q(z) = E_x q(z|x) over the data the N codes are
    drawn from, the N points given being a sample of it.

    Both average log q(z_s) - log p(z_s) over `n_samples` draws z_s ~ q (a data point n picked
    uniformly, then z ~ q(z|x_n)) and differ in the density they score z_s with:
      upper (in-sample): the mixture of all N posteriors, z_s's own included. It is unbiased for
        the N-point mixture, whose KL is convex in the mixture: over the draw of the N points it
        is biased upwards. With posteriors narrow against the spacing of the codes, z_s's own
        component dominates and it collapses to avg_n KL(q(z|x_n) || p) - ln N: the ELBO's KL
        term minus the most information N points can carry (Hoffman & Johnson 2016).
      lower (leave-one-out): the mixture of the other N - 1 posteriors, whose expected density
        at z_s is q(z_s) itself; by Jensen's inequality the expected log is below log q(z_s), so
        it is biased downwards, without bound as the posteriors narrow.
    Both biases vanish as N grows against the number of distinguishable codes, so a narrow
    bracket (upper - lower) means both estimate the KL; a wide one, that N codes cannot tell.
    Measured on N = 4,000 codes whose aggregate is exactly N(0, I) (KL = 0), posterior std 0.33,
    1,000 draws: (-0.005, 0.006) in 2 dimensions, (-16.0, 9.3) in 16, where the KL term is 17.7
    nats, the quickstart's size (tests/test_prior.py). Monte-Carlo error ~ std / sqrt(n_samples).
    Cost: O(n_samples * N * D).
    """
    g = torch.Generator().manual_seed(seed)
    mu, logvar = mu.detach().double().cpu(), logvar.detach().double().cpu()
    n, dim = mu.shape
    if n < 2:
        raise ValueError(f"the aggregate KL needs at least 2 codes, got {n}")
    which = torch.randint(n, (n_samples,), generator=g)
    z = mu[which] + torch.exp(0.5 * logvar[which]) * torch.randn(n_samples, dim, generator=g, dtype=torch.float64)

    # log N(z; mu_n, sigma_n^2) for all pairs, expanded into matrix products so memory is
    # O(chunk * N) rather than O(chunk * N * D)
    inv_var = torch.exp(-logvar)  # [N, D]
    const = -0.5 * ((mu**2 * inv_var).sum(1) + logvar.sum(1) + dim * math.log(2 * math.pi))  # [N]
    log_in, log_out = [], []
    for zc, own in zip(z.split(chunk), which.split(chunk), strict=True):
        log_comp = -0.5 * (zc**2) @ inv_var.T + zc @ (mu * inv_var).T + const  # [chunk, N]
        log_in.append(torch.logsumexp(log_comp, dim=1) - math.log(n))
        log_comp[torch.arange(len(own)), own] = -math.inf  # leave z's own posterior out
        log_out.append(torch.logsumexp(log_comp, dim=1) - math.log(n - 1))
    log_p = log_prior(z).double()  # p: N(0, I) unless `log_prior` (float64 z [n, D] -> [n]) says
    return float((torch.cat(log_out) - log_p).mean()), float((torch.cat(log_in) - log_p).mean())


def kl_aggregate_posterior(mu: Tensor, logvar: Tensor, n_samples: int = 2000, seed: int = 0,
                           chunk: int = 256, max_gap: float = 0.1, log_prior=standard_normal_log_prob) -> float:
    """KL(q(z) || p(z)) of the aggregate posterior in nats (p = N(0, I) unless `log_prior`): the leave-one-out estimate of
    kl_aggregate_bounds, biased downwards by at most the bracket's width in expectation. Where
    the bracket is wider than `max_gap` nats, N codes cannot tell the KL (in 16 dimensions that is
    the rule for a trained VAE, see kl_aggregate_bounds): ValueError, naming the bracket.
    """
    lower, upper = kl_aggregate_bounds(mu, logvar, n_samples, seed, chunk, log_prior)
    if upper - lower > max_gap:
        n, dim = mu.shape
        raise ValueError(f"{n} codes in {dim} dimensions cannot tell the aggregate KL: the "
                         f"leave-one-out and in-sample estimates bracket it at [{lower:.3g}, "
                         f"{upper:.3g}] nats, wider than {max_gap:g}")
    return lower


def active_units(mu: Tensor, threshold: float = 0.01) -> int:
    """Number of latent dimensions d with Var_x(E_q[z_d | x]) > threshold (Burda et al. 2016).

    mu: posterior means [N, D] over a set of data points; variance across points, unbiased.
    """
    return int((mu.detach().double().var(dim=0, unbiased=True) > threshold).sum())


class ExPostGMM:
    """Ex-post density estimation: a Gaussian mixture fitted to codes, sampled instead of the prior
    (Ghosh et al. 2020). Wraps sklearn's GaussianMixture with full covariances.

        gmm = ExPostGMM(n_components=10).fit(mu)   # codes [N, D] of the training set
        z = gmm.sample(64)                          # [64, D], decode these
    """

    def __init__(self, n_components: int = 10, covariance_type: str = "full", seed: int = 0, **kwargs):
        from sklearn.mixture import GaussianMixture

        # a RandomState object (not an int) so that successive sample() calls draw new points
        self.rng = np.random.RandomState(seed)
        self.gmm = GaussianMixture(n_components=n_components, covariance_type=covariance_type,
                                   random_state=self.rng, **kwargs)
        self.dtype, self.device = torch.float32, torch.device("cpu")

    def fit(self, z: Tensor) -> ExPostGMM:
        self.dtype, self.device = z.dtype, z.device
        self.gmm.fit(z.detach().double().cpu().numpy())
        return self

    def sample(self, n: int) -> Tensor:
        """n draws [n, D], in random order (sklearn returns them grouped by component)."""
        x, _ = self.gmm.sample(n)
        x = x[self.rng.permutation(n)]
        return torch.from_numpy(x).to(device=self.device, dtype=self.dtype)

    def log_prob(self, z: Tensor) -> Tensor:
        """log density of the fitted mixture at z [M, D], in nats."""
        lp = self.gmm.score_samples(z.detach().double().cpu().numpy())
        return torch.from_numpy(lp).to(device=z.device, dtype=z.dtype)
