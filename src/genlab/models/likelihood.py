"""Decoder likelihoods p(x | decoder output), in nats per image.

Images are floats in [0, 1]. `bernoulli` treats each pixel intensity as the probability target of
a Bernoulli with the decoder's logit (the usual binary cross-entropy on grey-level images, so the
value is a log-probability only for binary images); `gaussian` is a per-pixel Normal density with
mean = the decoder output and a standard deviation that is fixed or learned (one shared scalar, as
in the sigma-VAE of Rybkin et al. 2021), so its value is a log-density and can be positive.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

LIKELIHOODS = ("bernoulli", "gaussian")


def log_likelihood(x: Tensor, out: Tensor, kind: str, log_std: Tensor | None = None) -> Tensor:
    """log p(x | out) summed over pixels, one value per image [B]. Higher is better."""
    if kind == "bernoulli":
        ll = -F.binary_cross_entropy_with_logits(out, x, reduction="none")
    elif kind == "gaussian":
        ll = -0.5 * ((x - out) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)
    else:
        raise ValueError(f"unknown likelihood {kind!r}; allowed: {' | '.join(LIKELIHOODS)}")
    return ll.flatten(1).sum(1)


def mean_image(out: Tensor, kind: str) -> Tensor:
    """The mean of p(x | out), clamped to the image range [0, 1]."""
    return torch.sigmoid(out) if kind == "bernoulli" else out.clamp(0, 1)
