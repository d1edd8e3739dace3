"""Decoder likelihoods p(x | decoder output), in nats per image: components of the VAE and the DAE
(`model.likelihood`, registry LIKELIHOODS).

Images are floats in [0, 1]. `bernoulli` treats each pixel intensity as the probability target of
a Bernoulli with the decoder's logit (the usual binary cross-entropy on grey-level images, so the
value is a log-probability only for binary images); `gaussian` is a per-pixel Normal density with
mean = the decoder output and a standard deviation that is fixed or learned (`std`, `learn_std`:
one shared scalar, as in the sigma-VAE of Rybkin et al. 2021), so its value is a log-density and
can be positive.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genlab.registry import Component, Registry
from genlab.settings import Settings, flag, positive

LIKELIHOODS: Registry[type[Likelihood]] = Registry("likelihood", "model.likelihood")
LOG_2PI = math.log(2 * math.pi)


class Likelihood(Component, nn.Module):
    """p(x | out) for a decoder output `out` shaped like the images."""

    def log_prob(self, x: Tensor, out: Tensor) -> Tensor:
        """log p(x | out) summed over pixels, one value per image [B]. Higher is better."""
        raise NotImplementedError

    def mean(self, out: Tensor) -> Tensor:
        """The mean of p(x | out), clamped to the image range [0, 1]."""
        raise NotImplementedError

    def sample(self, out: Tensor) -> Tensor:
        """A draw x ~ p(x | out) in [0, 1] (the DAE's chain_draw=sample), from the training stream."""
        raise NotImplementedError


@LIKELIHOODS.register("bernoulli")
class Bernoulli(Likelihood):
    def log_prob(self, x, out):
        return -F.binary_cross_entropy_with_logits(out, x, reduction="none").flatten(1).sum(1)

    def mean(self, out):
        return torch.sigmoid(out)

    def sample(self, out):
        return torch.bernoulli(self.mean(out))


@dataclasses.dataclass
class GaussianSettings(Settings):
    std: float = positive(0.1)  # pixel standard deviation (the initial value when learn_std)
    learn_std: bool = flag(False)


@LIKELIHOODS.register("gaussian")
class Gaussian(Likelihood):
    Settings = GaussianSettings

    def __init__(self, settings: GaussianSettings):
        super().__init__(settings)
        self.log_std = nn.Parameter(torch.tensor(math.log(settings.std)), requires_grad=settings.learn_std)

    def log_prob(self, x, out):
        ll = -0.5 * ((x - out) / self.log_std.exp()) ** 2 - self.log_std - 0.5 * LOG_2PI
        return ll.flatten(1).sum(1)

    def mean(self, out):
        return out.clamp(0, 1)

    def sample(self, out):
        return (out + self.log_std.exp() * torch.randn_like(out)).clamp(0, 1)


__all__ = ["LIKELIHOODS", "Bernoulli", "Gaussian", "Likelihood"]

