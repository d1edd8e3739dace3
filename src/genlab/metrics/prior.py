"""Latent-space diagnostics: how the encoder's codes sit against the prior p(z) = N(0, I).

- `mmd(z_q, z_p)`: unbiased MMD^2 between two samples (e.g. codes vs prior draws), as in WAE.
- `kl_aggregate_posterior(mu, logvar)`: KL(q(z) || N(0, I)) of the aggregate posterior, in nats.
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


def kl_aggregate_posterior(mu: Tensor, logvar: Tensor, n_samples: int = 2000, seed: int = 0,
                           chunk: int = 256) -> float:
    """Monte-Carlo estimate of KL(q(z) || N(0, I)) in nats, where q(z) = 1/N sum_n q(z|x_n).

    Estimator: draw z_s ~ q (pick a data point n uniformly, then z ~ q(z|x_n)), and average
    log q(z_s) - log p(z_s) over the `n_samples` draws, where log q(z_s) is the exact log-density of
    the N-component mixture (a log-sum-exp over all N posteriors).

    What it estimates, and its bias: for the *empirical* aggregate posterior (the mixture over the N
    points given) it is unbiased, with Monte-Carlo error ~ std / sqrt(n_samples). As an estimate of
    the aggregate posterior over the whole data distribution it is biased upwards for finite N:
    each z_s is scored by a mixture that contains the component it was drawn from, so when the
    posteriors are narrow compared with the spacing of the codes (small variances, many latent
    dimensions, few points), log q(z_s) is dominated by that one component; the estimate then
    tends to avg_n KL(q(z|x_n) || p) - log N (the ELBO's KL term minus the largest mutual
    information N points can carry, Hoffman & Johnson 2016). Use N large compared with the number
    of distinguishable codes, and compare values computed with the same N.
    Cost: O(n_samples * N * D).
    """
    g = torch.Generator().manual_seed(seed)
    mu, logvar = mu.detach().double().cpu(), logvar.detach().double().cpu()
    n, dim = mu.shape
    which = torch.randint(n, (n_samples,), generator=g)
    z = mu[which] + torch.exp(0.5 * logvar[which]) * torch.randn(n_samples, dim, generator=g, dtype=torch.float64)

    # log N(z; mu_n, sigma_n^2) for all pairs, expanded into matrix products so memory is
    # O(chunk * N) rather than O(chunk * N * D)
    inv_var = torch.exp(-logvar)  # [N, D]
    const = -0.5 * ((mu**2 * inv_var).sum(1) + logvar.sum(1) + dim * math.log(2 * math.pi))  # [N]
    log_q = []
    for zc in z.split(chunk):
        quad = -0.5 * (zc**2) @ inv_var.T + zc @ (mu * inv_var).T  # [chunk, N]
        log_q.append(torch.logsumexp(quad + const, dim=1) - math.log(n))
    log_p = -0.5 * (z**2).sum(1) - 0.5 * dim * math.log(2 * math.pi)
    return float((torch.cat(log_q) - log_p).mean())


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
