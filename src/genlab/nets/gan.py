"""An image-to-image generator for the restoration GAN (the DCGAN needs nothing beyond conv.py).

The DCGAN's generator is a ConvDecoder with batch norm and its discriminator a ConvEncoder with
leaky ReLU (genlab.nets.conv). A restorer maps a degraded image to a clean one of the same shape;
UNet does that with the same stride-2 plan as ConvEncoder (28 -> 14 -> 7), so every genlab image
size works without new sizing rules.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from genlab.nets.conv import conv_plan


class UNet(nn.Module):
    """Image [B, C, H, W] -> image-shaped output [B, C, H, W] (no output activation).

    Down: stride-2 convolutions (kernel 4) with leaky ReLU; a 3x3 convolution at the bottom; up:
    transposed convolutions with ReLU, each fed the encoder features of its resolution (skip
    connections, as in pix2pix), and a last 3x3 convolution that also sees the input image. Skips
    matter for restoration: what survives the degradation (unmasked pixels, coarse shapes under
    blur) reaches the output without squeezing through the bottleneck. Batch norm after the inner
    layers, none on the first down and last layers (as DCGAN and pix2pix do).
    """

    def __init__(self, image_shape, base_channels: int = 32, norm: bool = True):
        super().__init__()
        channels, _ = conv_plan(image_shape, base_channels)
        c_img = image_shape[0]

        def block(conv: nn.Module, c_out: int, act: nn.Module, use_norm: bool) -> nn.Sequential:
            return nn.Sequential(conv, *([nn.BatchNorm2d(c_out)] if use_norm else []), act)

        self.down = nn.ModuleList()
        c_in = c_img
        for i, c_out in enumerate(channels):
            conv = nn.Conv2d(c_in, c_out, 4, 2, 1, bias=not (norm and i > 0))
            self.down.append(block(conv, c_out, nn.LeakyReLU(0.2), norm and i > 0))
            c_in = c_out
        self.middle = block(nn.Conv2d(c_in, c_in, 3, 1, 1, bias=not norm), c_in, nn.ReLU(), norm)
        self.up = nn.ModuleList()
        # going up, level i takes [features from below, skip of level i] -> channels of level i-1
        for i in reversed(range(len(channels))):
            c_out = channels[max(i - 1, 0)]
            conv = nn.ConvTranspose2d(c_in + channels[i], c_out, 4, 2, 1, bias=not norm)
            self.up.append(block(conv, c_out, nn.ReLU(), norm))
            c_in = c_out
        self.out = nn.Conv2d(c_in + c_img, c_img, 3, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        skips, h = [], x
        for layer in self.down:
            h = layer(h)
            skips.append(h)
        h = self.middle(h)
        for layer in self.up:
            h = layer(torch.cat([h, skips.pop()], dim=1))
        return self.out(torch.cat([h, x], dim=1))
