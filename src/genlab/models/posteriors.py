"""Posterior families q(z | x) of a VAE, by their reparameterisation noise: components
(`model.posterior`, registry POSTERIORS). The encoder gives a mean and a standard deviation per
latent unit; the family says how z = mu + std * eps draws eps and what density q has.

    gaussian  eps ~ N(0, 1): the usual VAE; its KL to a prior with a closed form is exact
    uniform   eps ~ U(-sqrt 3, sqrt 3), unit variance like the Gaussian's: a box posterior whose
              KL is always the Monte-Carlo estimate log q(z|x) - log p(z) at the draw
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from genlab.models.priors import Prior, gaussian_log_prob
from genlab.registry import Component, Registry
from genlab.seeding import ExampleNoise, draw

POSTERIORS: Registry[type[Posterior]] = Registry("posterior family", "model.posterior")
SQRT3 = math.sqrt(3.0)
Noise = torch.Generator | ExampleNoise | None


class Posterior(Component):
    def noise(self, shape, generator: Noise, batch_dim: int, dtype, device) -> Tensor:
        """Unit-variance eps of `shape`, drawn from `generator` when given (evaluations: one
        generator per image, along `batch_dim`), else from the training stream."""
        raise NotImplementedError

    def log_prob(self, z: Tensor, mu: Tensor, std: Tensor) -> Tensor:
        """log q(z | x) summed over latent dimensions."""
        raise NotImplementedError

    def kl(self, z: Tensor, mu: Tensor, std: Tensor, prior: Prior) -> Tensor:
        """KL(q(z|x) || p) per image: the Monte-Carlo estimate at the draw z."""
        return self.log_prob(z, mu, std) - prior.log_prob(z)


@POSTERIORS.register("gaussian")
class Gaussian(Posterior):
    def noise(self, shape, generator, batch_dim, dtype, device):
        return draw(shape, generator, normal=True, batch_dim=batch_dim, dtype=dtype, device=device)

    def log_prob(self, z, mu, std):
        return gaussian_log_prob(z, mu, std)

    def kl(self, z, mu, std, prior):
        exact = prior.kl_from_gaussian(mu, std)
        return super().kl(z, mu, std, prior) if exact is None else exact


@POSTERIORS.register("uniform")
class Uniform(Posterior):
    def noise(self, shape, generator, batch_dim, dtype, device):
        return (draw(shape, generator, batch_dim=batch_dim, dtype=dtype, device=device) * 2 - 1) * SQRT3

    def log_prob(self, z, mu, std):
        inside = ((z - mu).abs() <= SQRT3 * std * (1 + 1e-5)).all(-1)
        log_density = -(torch.log(2 * SQRT3 * std)).sum(-1).expand_as(inside)
        return torch.where(inside, log_density, torch.full_like(log_density, -math.inf))


__all__ = ["POSTERIORS", "Gaussian", "Posterior", "Uniform"]
