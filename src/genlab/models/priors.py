"""Priors p(z) over a VAE's latent space: components (`model.prior`, registry PRIORS).

A prior gives log p(z) (summed over latent dimensions), draws z for generation, and where it has
one the closed-form KL(N(mu, std^2) || p) of a Gaussian posterior; where it has none (None), the
VAE uses the Monte-Carlo estimate log q(z|x) - log p(z) at the posterior draw (docs/objectives.md).

    standard_normal  N(0, I), the VAE's usual prior
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from genlab.registry import Component, Registry

PRIORS: Registry[type[Prior]] = Registry("prior", "model.prior")
LOG_2PI = math.log(2 * math.pi)


class Prior(Component, nn.Module):
    """p(z) over `latent_dim` units (the context every prior is built with)."""

    def __init__(self, settings=None, latent_dim: int = 1):
        super().__init__(settings)
        self.latent_dim = latent_dim

    def log_prob(self, z: Tensor) -> Tensor:
        """log p(z) summed over the last (latent) dimension."""
        raise NotImplementedError

    def sample(self, n: int, device=None) -> Tensor:
        """n draws [n, latent_dim] from the training stream."""
        raise NotImplementedError

    def kl_from_gaussian(self, mu: Tensor, std: Tensor) -> Tensor | None:
        """KL(N(mu, std^2) || p) per image [B] in closed form, or None where there is none."""
        return None


@PRIORS.register("standard_normal")
class StandardNormal(Prior):
    def log_prob(self, z):
        return (-0.5 * z**2 - 0.5 * LOG_2PI).sum(-1)

    def sample(self, n, device=None):
        return torch.randn(n, self.latent_dim, device=device)

    def kl_from_gaussian(self, mu, std):
        return 0.5 * (mu**2 + std**2 - 1 - 2 * std.log()).sum(1)


__all__ = ["PRIORS", "Prior", "StandardNormal"]
