"""The GANs' own networks: the discriminator (a global or a patch head, a normalisation that never
mixes images) and the restoration GAN's image-to-image generator.

The DCGAN's generator is a ConvDecoder with batch norm (genlab.nets.conv). A restorer maps a
degraded image to a clean one of the same shape; UNet does that with the same stride-2 plan as
ConvEncoder (28 -> 14 -> 7), so every genlab image size works without new sizing rules.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from genlab.nets.conv import conv_plan

# layer, instance and spectral norm act on one image at a time. batch (DCGAN's and the textbook
# loop's choice; each batch D is shown is normalised on its own) makes an image's realness depend
# on the rest of its batch, so R1 and WGAN-GP, gradients of one image's score with respect to that
# image, are no longer per-image quantities: genlab refuses that combination.
D_NORMS = ("none", "batch", "layer", "instance", "spectral")
D_HEADS = ("global", "patch")


class Discriminator(nn.Module):
    """Image [B, C, H, W] in [-1, 1] -> raw outputs [B, K, L]: K outputs at each of L locations.

    Trunk: stride-2 convolutions (kernel 4, the ConvEncoder plan: 28 -> 14 -> 7) with leaky ReLU
    0.2, the normalisation after all but the first (DCGAN's placement); `spectral` instead
    constrains every convolution and the head (Miyato et al. 2018).
    head=global: a linear layer on the whole last feature map, L = 1 (one verdict per image).
    head=patch: a 1x1 convolution on the last feature map, L = side^2 (PatchGAN-style, Isola et
    al. 2017): each verdict sees only its receptive field (10x10 pixels for 28x28 images).
    """

    def __init__(self, image_shape, outputs: int, base_channels: int = 64, norm: str = "none",
                 head: str = "global"):
        super().__init__()
        if norm not in D_NORMS or head not in D_HEADS:
            raise ValueError(f"norm must be one of {D_NORMS} and head one of {D_HEADS}, got {norm}, {head}")
        channels, side = conv_plan(image_shape, base_channels)
        wrap = spectral_norm if norm == "spectral" else (lambda m: m)
        layers: list[nn.Module] = []
        c_in = image_shape[0]
        for i, c_out in enumerate(channels):
            layers.append(wrap(nn.Conv2d(c_in, c_out, 4, 2, 1)))
            if i > 0 and norm == "batch":
                layers.append(nn.BatchNorm2d(c_out))
            elif i > 0 and norm in ("layer", "instance"):
                layers.append(nn.GroupNorm(1 if norm == "layer" else c_out, c_out))
            layers.append(nn.LeakyReLU(0.2))
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.head = wrap(nn.Linear(c_in * side * side, outputs) if head == "global"
                         else nn.Conv2d(c_in, outputs, 1))
        self.outputs = outputs
        self.locations = 1 if head == "global" else side * side

    def forward(self, x: Tensor) -> Tensor:
        h = self.features(x)
        if self.locations == 1:
            h = h.flatten(1)
        return self.head(h).reshape(len(x), self.outputs, self.locations)


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
