"""The GANs' own networks: the discriminator (a global or a patch head, a normalisation that never
mixes images) and the restoration GAN's image-to-image generator, and the registries the GAN
families take them from (component slots, bottom of this module):

    model.generator      GENERATORS (model=dcgan): dcgan, genlab.nets.conv.ConvDecoder with batch norm;
                         conditional_dcgan, the same with class-conditional batch norm
                         RESTORERS (model=restoration_gan): unet
    model.discriminator  DISCRIMINATORS: conv (base_channels, norm, head); projection (base_channels,
                         norm), the projection discriminator of a conditional generator
(the conditional ones are registered in genlab.nets.conditional)

A restorer maps a degraded image to a clean one of the same shape; UNet does that with the same
stride-2 plan as ConvEncoder (28 -> 14 -> 7), so every genlab image size works without new sizing rules.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from genlab.config import require
from genlab.nets.conv import ConvDecoder, conv_plan
from genlab.registry import Component, Registry
from genlab.settings import Settings, choice, positive_int

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


# --- the GANs' network slots: recipes registered by name, built by their family ------------------
# A generator recipe builds latent -> image (`model.generator` of model=dcgan), a restorer recipe
# image -> image (`model.generator` of model=restoration_gan), a discriminator recipe image ->
# [B, K, L] with the K outputs its game asks for (`model.discriminator`). A recipe holds no weights:
# the family builds the networks from it, in its own order (the weights' initial values come from
# the global random stream), and a restoration GAN's second discriminator comes from the same one.

GENERATORS: Registry[type[Generator]] = Registry("generator", "model.generator")
RESTORERS: Registry[type[Restorer]] = Registry("restorer", "model.generator")
DISCRIMINATORS: Registry[type[DiscriminatorNet]] = Registry("discriminator", "model.discriminator")


class Generator(Component):
    conditional: ClassVar[bool] = False  # its network takes (z, y): genlab.nets.conditional

    def network(self, latent_dim: int, image_shape) -> nn.Module:
        """latent codes [B, latent_dim] -> pre-activation images [B, C, H, W] (tanh follows)."""
        raise NotImplementedError


class Restorer(Component):
    def network(self, image_shape) -> nn.Module:
        """images [B, C, H, W] in [-1, 1] -> pre-activation images of the same shape."""
        raise NotImplementedError


class DiscriminatorNet(Component):
    conditional: ClassVar[bool] = False  # its network takes (x, y): genlab.nets.conditional

    def network(self, image_shape, outputs: int) -> nn.Module:
        """images [B, C, H, W] in [-1, 1] -> raw outputs [B, outputs, L]."""
        raise NotImplementedError

    def allow_gradient_penalty(self, key: str) -> None:
        """Called when a per-image gradient penalty (R1, WGAN-GP) is on: a ConfigError naming
        `key`.<setting> when an image's output depends on the rest of its batch."""


@dataclasses.dataclass
class DCGANGeneratorSettings(Settings):
    base_channels: int = positive_int(64)  # widths 2*base, base of the transposed convolutions


@GENERATORS.register("dcgan")
class DCGANGenerator(Generator):
    """genlab.nets.conv.ConvDecoder with batch norm (Radford et al. 2016)."""

    Settings = DCGANGeneratorSettings

    def network(self, latent_dim, image_shape):
        return ConvDecoder(latent_dim, image_shape, base_channels=self.settings.base_channels, norm=True)


@dataclasses.dataclass
class UNetSettings(Settings):
    base_channels: int = positive_int(32)  # widths base, 2*base down the U (28 -> 14 -> 7)


@RESTORERS.register("unet")
class UNetRestorer(Restorer):
    Settings = UNetSettings

    def network(self, image_shape):
        return UNet(image_shape, self.settings.base_channels)


@dataclasses.dataclass
class ConvDiscriminatorSettings(Settings):
    base_channels: int = positive_int(64)  # widths base, 2*base of the stride-2 convolutions
    norm: str = choice("none", D_NORMS)  # after all but the first convolution (Discriminator)
    head: str = choice("global", D_HEADS)  # global: one realness per image | patch: one per location


@DISCRIMINATORS.register("conv")
class ConvDiscriminator(DiscriminatorNet):
    Settings = ConvDiscriminatorSettings

    def network(self, image_shape, outputs):
        s = self.settings
        return Discriminator(image_shape, outputs, s.base_channels, s.norm, s.head)

    def allow_gradient_penalty(self, key):
        require(self.settings.norm != "batch", f"{key}.norm",
                f"{' | '.join(n for n in D_NORMS if n != 'batch')} with R1 or WGAN-GP (batch norm "
                "makes an image's score depend on its batch, so a per-image gradient penalty is no "
                "longer per image)", self.settings.norm)
