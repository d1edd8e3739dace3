"""Priors p(z) over a VAE's latent space: components (`model.prior`, registry PRIORS).

A prior gives log p(z) (summed over latent dimensions), draws z for generation, and where it has
one the closed-form KL(N(mu, std^2) || p) of a Gaussian posterior; where it has none (None), the
VAE uses the Monte-Carlo estimate log q(z|x) - log p(z) at the posterior draw (docs/objectives.md).

    standard_normal  N(0, I), the VAE's usual prior
    vamp             the VampPrior (Tomczak & Welling 2018): (1/K) sum_k q(z | u_k), the VAE's own
                     posterior at K learned pseudo-inputs u_k (components, init_mean, init_std)
    mog              a learned mixture of K diagonal Gaussians: means, log standard deviations and
                     mixture logits (components, mean_spread, init_std)

Every prior is built with the same context by its VAE: `latent_dim`, `image_shape`, `posterior_fn`
(x -> q(z|x)'s mean and std, the VAE's encoder) and `q` (the VAE's posterior component: its
family's log_prob and noise). A prior takes what it needs and ignores the rest. The learned priors'
parameters are submodules of the VAE (through `VAE.prior`), so they train with it, and the VAE's
test/loglik scores them through VAE.log_prior.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genlab.registry import Component, Registry
from genlab.seeding import draw
from genlab.settings import Settings, nonnegative, positive, positive_int

PRIORS: Registry[type[Prior]] = Registry("prior", "model.prior")
LOG_2PI = math.log(2 * math.pi)


class Prior(Component, nn.Module):
    """p(z) over `latent_dim` units (the context every prior is built with; see the module)."""

    def __init__(self, settings=None, latent_dim: int = 1, **context):
        super().__init__(settings)
        self.latent_dim = latent_dim

    def log_prob(self, z: Tensor) -> Tensor:
        """log p(z) summed over the last (latent) dimension."""
        raise NotImplementedError

    def sample(self, n: int, device=None, generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.float32) -> Tensor:
        """n draws [n, latent_dim] on `device`: from `generator` when given (evaluations: a seeded
        CPU generator, the same draws on any device), else from the training stream; `dtype`, the
        precision the draws are made in."""
        raise NotImplementedError

    def kl_from_gaussian(self, mu: Tensor, std: Tensor) -> Tensor | None:
        """KL(N(mu, std^2) || p) per image [B] in closed form, or None where there is none."""
        return None


@PRIORS.register("standard_normal")
class StandardNormal(Prior):
    def log_prob(self, z):
        return (-0.5 * z**2 - 0.5 * LOG_2PI).sum(-1)

    def sample(self, n, device=None, generator=None, dtype=torch.float32):
        return draw((n, self.latent_dim), generator, normal=True, dtype=dtype, device=device)

    def kl_from_gaussian(self, mu, std):
        return 0.5 * (mu**2 + std**2 - 1 - 2 * std.log()).sum(1)


def gaussian_log_prob(z: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """log N(z; mean, diag(std^2)) summed over the last dimension (broadcasting)."""
    return (-0.5 * ((z - mean) / std) ** 2 - std.log() - 0.5 * LOG_2PI).sum(-1)


@dataclasses.dataclass
class VampSettings(Settings):
    components: int = positive_int(100)  # K pseudo-inputs (the paper's MNIST models: 500)
    # each pseudo-input pixel starts as N(init_mean, init_std^2), small values near black as in the
    # authors' code, and is kept in [0, 1] by a hardtanh (their choice too)
    init_mean: float = nonnegative(0.05)
    init_std: float = positive(0.01)


@PRIORS.register("vamp")
class VampPrior(Prior):
    """p(z) = (1/K) sum_k q(z | u_k): the VAE's posterior, in its own family (model.posterior:
    a Gaussian, or a box for the uniform posterior), at K learned image-shaped pseudo-inputs u_k
    that the VAE's encoder maps to the components' means and standard deviations. u_k =
    hardtanh(a_k, 0, 1), a_k the learned parameters (so a pixel pushed outside [0, 1] stops
    moving, as in the authors' implementation). With the uniform posterior the components are
    boxes, and log p(z) = -inf outside all of them: the Monte-Carlo KL of a posterior draw
    outside every box is +inf (from the first step with fresh pseudo-inputs: docs/objectives.md)."""

    Settings = VampSettings

    def __init__(self, settings=None, latent_dim: int = 1, *, image_shape=None,
                 posterior_fn: Callable[[Tensor], tuple[Tensor, Tensor]] | None = None, q=None,
                 **context):
        super().__init__(settings, latent_dim)
        if image_shape is None or posterior_fn is None or q is None:
            raise TypeError("the VampPrior needs its VAE's image_shape, posterior_fn and q")
        s = self.settings
        self.pseudo_inputs = nn.Parameter(
            torch.randn(s.components, *image_shape) * s.init_std + s.init_mean)
        self.posterior_fn, self.q = posterior_fn, q

    def inputs(self) -> Tensor:
        """The pseudo-inputs u_k as images in [0, 1]: [K, C, H, W]."""
        return F.hardtanh(self.pseudo_inputs, 0.0, 1.0)

    def components(self) -> tuple[Tensor, Tensor]:
        """The components' means and standard deviations, each [K, D]."""
        return self.posterior_fn(self.inputs())

    def log_prob(self, z):
        mu, std = self.components()
        per_component = self.q.log_prob(z.unsqueeze(-2), mu, std)  # [..., K]
        return torch.logsumexp(per_component, -1) - math.log(len(mu))

    def sample(self, n, device=None, generator=None, dtype=torch.float32):
        mu, std = self.components()
        which = draw((n,), generator, device=mu.device).mul(len(mu)).long().clamp(max=len(mu) - 1)
        eps = self.q.noise((n, self.latent_dim), generator, batch_dim=0, dtype=mu.dtype, device=mu.device)
        z = mu[which] + std[which] * eps
        return z.to(dtype=dtype) if device is None else z.to(device=device, dtype=dtype)


@dataclasses.dataclass
class MoGSettings(Settings):
    components: int = positive_int(10)  # K Gaussians
    mean_spread: float = nonnegative(1.0)  # the initial means are N(0, mean_spread^2) draws
    init_std: float = positive(1.0)  # every component's initial standard deviation


@PRIORS.register("mog")
class MixtureOfGaussians(Prior):
    """p(z) = sum_k pi_k N(z; m_k, diag(s_k^2)), pi = softmax(logits): means, log standard
    deviations and logits learned with the VAE (the logits start equal)."""

    Settings = MoGSettings

    def __init__(self, settings=None, latent_dim: int = 1, **context):
        super().__init__(settings, latent_dim)
        s = self.settings
        self.means = nn.Parameter(torch.randn(s.components, latent_dim) * s.mean_spread)
        self.log_stds = nn.Parameter(torch.full((s.components, latent_dim), math.log(s.init_std)))
        self.logits = nn.Parameter(torch.zeros(s.components))

    def stds(self) -> Tensor:
        return torch.exp(self.log_stds.clamp(-15.0, 10.0))

    def log_prob(self, z):
        per_component = gaussian_log_prob(z.unsqueeze(-2), self.means, self.stds())  # [..., K]
        return torch.logsumexp(per_component + F.log_softmax(self.logits, -1), -1)

    def sample(self, n, device=None, generator=None, dtype=torch.float32):
        which = torch.multinomial(F.softmax(self.logits, -1).cpu(), n, replacement=True, generator=generator)
        which = which.to(self.means.device)
        eps = draw((n, self.latent_dim), generator, normal=True, dtype=self.means.dtype, device=self.means.device)
        z = self.means[which] + self.stds()[which] * eps
        return z.to(dtype=dtype) if device is None else z.to(device=device, dtype=dtype)


__all__ = ["PRIORS", "MixtureOfGaussians", "Prior", "StandardNormal", "VampPrior", "gaussian_log_prob"]
