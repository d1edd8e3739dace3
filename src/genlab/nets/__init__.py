"""Plain nn.Modules (no Lightning): encoders, decoders, generators, discriminators, and NETS, the
registry of encoder/decoder pairs a VAE or a DAE is composed with (`model.net`): a component whose
`encoder(image_shape, out_dim)` and `decoder(in_dim, image_shape)` build the two networks.

    conv  genlab.nets.conv: two stride-2 convolutions and a linear layer, mirrored (base_channels)
    mlp   genlab.nets.mlp: fully connected, the VAE papers' MNIST networks (hidden, activation)
"""

from __future__ import annotations

import dataclasses

from torch import nn

from genlab.config import require
from genlab.nets.conv import ConvDecoder, ConvEncoder, conv_plan
from genlab.nets.mlp import ACTIVATIONS, MLPDecoder, MLPEncoder
from genlab.registry import Component, Registry
from genlab.settings import Settings, choice, positive_int, setting

NETS: Registry[type[Net]] = Registry("network", "model.net")


class Net(Component):
    """An encoder/decoder pair's recipe."""

    def encoder(self, image_shape, out_dim: int) -> nn.Module:
        raise NotImplementedError

    def decoder(self, in_dim: int, image_shape) -> nn.Module:
        raise NotImplementedError


@dataclasses.dataclass
class ConvSettings(Settings):
    base_channels: int = positive_int(32)  # channels of the first convolution; the second has twice


@NETS.register("conv")
class Conv(Net):
    Settings = ConvSettings

    def encoder(self, image_shape, out_dim):
        return ConvEncoder(image_shape, out_dim, self.settings.base_channels)

    def decoder(self, in_dim, image_shape):
        return ConvDecoder(in_dim, image_shape, base_channels=self.settings.base_channels)


def _widths(value, key: str) -> None:
    ok = isinstance(value, list) and len(value) > 0
    require(ok and all(isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in value),
            key, "a non-empty list of positive layer widths, e.g. [500]", value)


@dataclasses.dataclass
class MLPSettings(Settings):
    hidden: list[int] = setting(rule=_widths, factory=lambda: [500])  # widths from the image inwards
    activation: str = choice("tanh", list(ACTIVATIONS))


@NETS.register("mlp")
class MLP(Net):
    Settings = MLPSettings

    def encoder(self, image_shape, out_dim):
        return MLPEncoder(image_shape, out_dim, self.settings.hidden, self.settings.activation)

    def decoder(self, in_dim, image_shape):
        return MLPDecoder(in_dim, image_shape, self.settings.hidden, self.settings.activation)


__all__ = ["ACTIVATIONS", "NETS", "ConvDecoder", "ConvEncoder", "MLPDecoder", "MLPEncoder", "Net", "conv_plan"]
