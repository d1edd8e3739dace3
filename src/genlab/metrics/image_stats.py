"""Cheap per-image statistics and the distance between their distributions.

`image_statistics` is what the shortcut probe (genlab.probe) fits on and what `stat_fd` compares:
brightness, contrast, high-frequency energy and the histogram, no shapes. `stat_fd` is the GANs'
per-epoch monitor (val/stat_fd): a Frechet distance that needs no feature network.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

HIST_BINS = 16


def image_statistics(x: Tensor | np.ndarray) -> np.ndarray:
    """Per-image statistics of images [N, C, H, W] with values in [0, 1] -> float64 [N, 4 + 16].

    Columns: mean, std, gradient energy (mean squared difference of horizontal and vertical
    neighbours), Laplacian energy (mean squared 4-neighbour Laplacian over interior pixels), and
    the fraction of pixels in each of 16 equal intensity bins over [0, 1] (values outside [0, 1]
    count in the end bins). The two energies are the high-frequency content that noise raises and
    blur lowers.
    """
    x = torch.as_tensor(x, dtype=torch.float64)
    if not (x.dim() == 4 and x.shape[-1] >= 3 and x.shape[-2] >= 3):
        raise ValueError(f"image_statistics needs images [N, C, H, W] with H, W >= 3, got {tuple(x.shape)}")
    n = x.shape[0]
    flat = x.reshape(n, -1)
    mean, std = flat.mean(1), flat.std(1)
    grad = torch.cat([(x[..., :, 1:] - x[..., :, :-1]).reshape(n, -1),
                      (x[..., 1:, :] - x[..., :-1, :]).reshape(n, -1)], dim=1).pow(2).mean(1)
    lap = (4 * x[..., 1:-1, 1:-1] - x[..., :-2, 1:-1] - x[..., 2:, 1:-1]
           - x[..., 1:-1, :-2] - x[..., 1:-1, 2:]).reshape(n, -1).pow(2).mean(1)
    bins = (flat * HIST_BINS).long().clamp(0, HIST_BINS - 1)
    hist = torch.zeros(n, HIST_BINS, dtype=torch.float64).scatter_add_(1, bins, torch.ones_like(flat))
    hist /= flat.shape[1]
    return torch.cat([torch.stack([mean, std, grad, lap], 1), hist], 1).numpy()


def moments(features: Tensor) -> list[Tensor]:
    """[count, sum, sum of outer products] of features [N, F] in float64: sums that add across
    batches and DDP ranks exactly."""
    f = features.double()
    return [f.new_tensor(float(len(f))), f.sum(0), f.T @ f]


def frechet_distance(mu1: Tensor, cov1: Tensor, mu2: Tensor, cov2: Tensor) -> float:
    """|mu1 - mu2|^2 + tr(cov1 + cov2 - 2 (cov1 cov2)^(1/2)) between two Gaussians, >= 0.

    tr (cov1 cov2)^(1/2) = tr (cov1^(1/2) cov2 cov1^(1/2))^(1/2), a symmetric matrix whose square
    root comes from its eigenvalues (clamped at 0 against round-off).
    """
    w, v = torch.linalg.eigh(cov1)
    root1 = v @ torch.diag(w.clamp_min(0).sqrt()) @ v.T
    m = root1 @ cov2 @ root1
    tr_root = torch.linalg.eigvalsh((m + m.T) / 2).clamp_min(0).sqrt().sum()
    return float((mu1 - mu2).pow(2).sum() + cov1.trace() + cov2.trace() - 2 * tr_root)


def stat_fd(real: list[Tensor], fake: list[Tensor]) -> float:
    """val/stat_fd: Frechet distance between Gaussians fitted to the per-image statistics of
    image_statistics (mean, std, gradient and Laplacian energy, 16-bin histogram) of real and generated
    images, each statistic divided by its standard deviation over the real images.

    Unitless, >= 0, lower is better; 0 when the means and covariances agree. It sees what the
    shortcut probe sees (brightness, contrast, sharpness, histogram) and no shapes: a cheap monitor
    for checkpoints and sweeps that needs no feature network, not a substitute for FID.
    `real`, `fake`: moments() sums.
    """
    def gaussian(m):
        n, s1, s2 = m
        mu = s1 / n
        return mu, (s2 - n * torch.outer(mu, mu)) / max(float(n) - 1, 1.0)

    (mu_r, cov_r), (mu_f, cov_f) = gaussian(real), gaussian(fake)
    scale = cov_r.diagonal().clamp_min(0).sqrt().clamp_min(1e-6)
    outer = torch.outer(scale, scale)
    return frechet_distance(mu_r / scale, cov_r / outer, mu_f / scale, cov_f / outer)
