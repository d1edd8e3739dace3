"""Convolutional encoder and decoder sized from the image shape.

Each stride-2 convolution (kernel 4, padding 1) halves the side; we downsample while the side is
even and the result stays >= 4 pixels: 28 -> 14 -> 7, 8 -> 4, 64 -> 32 -> 16 -> 8 -> 4. For 28x28
with base_channels=32 this is the classic Conv(1,32,4,2,1)-Conv(32,64,4,2,1)-Linear(3136, out).
"""

from __future__ import annotations

import math

from torch import Tensor, nn


def conv_plan(image_shape, base_channels: int = 32) -> tuple[list[int], int]:
    """(channels after each stride-2 conv, side length of the last feature map)."""
    _, h, w = image_shape
    if h != w:
        raise ValueError(f"square images only, got {h}x{w}")
    channels, side = [], h
    while side % 2 == 0 and side // 2 >= 4:
        channels.append(base_channels * min(2 ** len(channels), 2))
        side //= 2
    if not channels:
        raise ValueError(f"image side {h} is too small to downsample (need an even side >= 8)")
    return channels, side


def _activation(name: str) -> nn.Module:
    return {"relu": nn.ReLU(), "lrelu": nn.LeakyReLU(0.2)}[name]


class ConvEncoder(nn.Module):
    """Image [B, C, H, W] -> vector [B, out_dim]."""

    def __init__(self, image_shape, out_dim: int, base_channels: int = 32,
                 activation: str = "relu", norm: bool = False, in_channels: int | None = None):
        super().__init__()
        channels, side = conv_plan(image_shape, base_channels)
        layers: list[nn.Module] = []
        c_in = in_channels or image_shape[0]
        for i, c_out in enumerate(channels):
            layers.append(nn.Conv2d(c_in, c_out, 4, 2, 1, bias=not (norm and i > 0)))
            if norm and i > 0:
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(_activation(activation))
            c_in = c_out
        layers += [nn.Flatten(), nn.Linear(c_in * side * side, out_dim)]
        self.net = nn.Sequential(*layers)
        self.feature_dim = c_in * side * side

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ConvDecoder(nn.Module):
    """Vector [B, in_dim] -> image-shaped output [B, out_channels, H, W] (no output activation)."""

    def __init__(self, in_dim: int, image_shape, out_channels: int | None = None,
                 base_channels: int = 32, activation: str = "relu", norm: bool = False):
        super().__init__()
        channels, side = conv_plan(image_shape, base_channels)
        channels = channels[::-1]
        self.start = (channels[0], side, side)
        layers: list[nn.Module] = [nn.Linear(in_dim, math.prod(self.start))]
        if norm:
            layers.append(nn.BatchNorm1d(math.prod(self.start)))
        layers += [_activation(activation), nn.Unflatten(1, self.start)]
        for i, c_in in enumerate(channels):
            last = i == len(channels) - 1
            c_out = (out_channels or image_shape[0]) if last else channels[i + 1]
            layers.append(nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=last or not norm))
            if not last:
                if norm:
                    layers.append(nn.BatchNorm2d(c_out))
                layers.append(_activation(activation))
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)
