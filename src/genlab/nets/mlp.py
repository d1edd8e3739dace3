"""Fully-connected encoder and decoder: the networks of the VAE papers' MNIST experiments.

Kingma & Welling 2014 (AEVB, appendix C) use one hidden layer of 500 tanh units in the encoder and
the decoder; Burda et al. 2016 (IWAE, one stochastic layer) use two of 200. `hidden` lists the
encoder's widths from the image inwards; the decoder mirrors them.
"""

from __future__ import annotations

import itertools
import math

from torch import Tensor, nn

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}


def _stack(sizes: list[int], activation: str) -> list[nn.Module]:
    """Linear layers through `sizes`, the activation after each but the last."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(ACTIVATIONS[activation]())
    return layers


class MLPEncoder(nn.Module):
    """Image [B, C, H, W] -> vector [B, out_dim]."""

    def __init__(self, image_shape, out_dim: int, hidden: list[int], activation: str = "tanh"):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), *_stack([math.prod(image_shape), *hidden, out_dim],
                                                       activation))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class MLPDecoder(nn.Module):
    """Vector [B, in_dim] -> image-shaped output [B, C, H, W] (no output activation)."""

    def __init__(self, in_dim: int, image_shape, hidden: list[int], activation: str = "tanh"):
        super().__init__()
        sizes = [in_dim, *reversed(hidden), math.prod(image_shape)]
        self.net = nn.Sequential(*_stack(sizes, activation), nn.Unflatten(1, tuple(image_shape)))

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)
