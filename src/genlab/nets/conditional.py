"""The conditional DCGAN's networks (Miyato & Koyama 2018, "cGANs with projection discriminator"):

ConditionalBatchNorm  batch norm without its own affine map, followed by the class's gain and bias:
                      out = gain[y] * (h - mean) / sqrt(var + eps) + bias[y] (gains start at 1,
                      biases at 0: at initialisation it is plain batch norm)
ConditionalGenerator  genlab.nets.conv.ConvDecoder(norm=True) with every batch norm conditional:
                      Linear(latent, 2b*s*s)-CBN-ReLU-ConvT(2b, b)-CBN-ReLU-ConvT(b, C) (tanh follows)
ProjectionDiscriminator  the conv discriminator's trunk phi(x) (genlab.nets.gan.Discriminator, global
                      head) and D(x, y) = psi(phi(x)) + <embed(y), phi(x)>, psi the linear head;
                      the projection is added to the first output, the realness logit.
"""

from __future__ import annotations

import dataclasses
import math

from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from genlab.config import require
from genlab.nets.conv import conv_plan
from genlab.nets.gan import (
    D_NORMS,
    DISCRIMINATORS,
    GENERATORS,
    ConvDiscriminator,
    DCGANGeneratorSettings,
    Discriminator,
    Generator,
)
from genlab.settings import Settings, choice, positive_int


class ConditionalBatchNorm(nn.Module):
    """Batch norm (1-d over [B, F] or 2-d over [B, F, H, W]) with a gain and a bias per class."""

    def __init__(self, features: int, num_classes: int, dims: int = 2):
        super().__init__()
        self.norm = (nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d)(features, affine=False)
        self.gain = nn.Embedding(num_classes, features)
        self.bias = nn.Embedding(num_classes, features)
        nn.init.ones_(self.gain.weight)
        nn.init.zeros_(self.bias.weight)

    def forward(self, h: Tensor, y: Tensor) -> Tensor:
        shape = (len(h), -1, *([1] * (h.dim() - 2)))
        return self.gain(y).view(shape) * self.norm(h) + self.bias(y).view(shape)


class ConditionalGenerator(nn.Module):
    """(z [B, latent_dim], y [B]) -> pre-activation images [B, C, H, W] (module docstring)."""

    def __init__(self, latent_dim: int, image_shape, num_classes: int, base_channels: int = 64):
        super().__init__()
        channels, side = conv_plan(image_shape, base_channels)
        channels = channels[::-1]
        self.start = (channels[0], side, side)
        self.linear = nn.Linear(latent_dim, math.prod(self.start))
        self.norms = nn.ModuleList([ConditionalBatchNorm(math.prod(self.start), num_classes, dims=1)])
        self.convs = nn.ModuleList()
        for i, c_in in enumerate(channels):
            last = i == len(channels) - 1
            c_out = image_shape[0] if last else channels[i + 1]
            self.convs.append(nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=last))
            if not last:
                self.norms.append(ConditionalBatchNorm(c_out, num_classes))
        self.act = nn.ReLU()

    def forward(self, z: Tensor, y: Tensor) -> Tensor:
        h = self.act(self.norms[0](self.linear(z), y)).view(len(z), *self.start)
        for i, conv in enumerate(self.convs):
            h = conv(h)
            if i + 1 < len(self.norms):
                h = self.act(self.norms[i + 1](h, y))
        return h


class ProjectionDiscriminator(Discriminator):
    """(images [B, C, H, W] in [-1, 1], y [B]) -> raw outputs [B, K, 1] (module docstring)."""

    def __init__(self, image_shape, outputs: int, num_classes: int, base_channels: int = 64,
                 norm: str = "none"):
        super().__init__(image_shape, outputs, base_channels, norm, head="global")
        channels, side = conv_plan(image_shape, base_channels)
        embed = nn.Embedding(num_classes, channels[-1] * side * side)
        nn.init.normal_(embed.weight, std=0.02)
        self.embed = spectral_norm(embed) if norm == "spectral" else embed

    def phi(self, x: Tensor) -> Tensor:
        """The trunk's features [B, F] (what psi and the projection read)."""
        return self.features(x).flatten(1)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        h = self.phi(x)
        out = self.head(h)  # psi(phi(x)), [B, K]
        projection = (self.embed(y) * h).sum(1)
        out = out + nn.functional.pad(projection[:, None], (0, self.outputs - 1))
        return out.reshape(len(x), self.outputs, 1)


__all__ = ["ConditionalBatchNorm", "ConditionalGenerator", "ProjectionDiscriminator"]


# --- the components (`model.generator=conditional_dcgan`, `model.discriminator=projection`) --------
# Built with the context num_classes (model.num_classes), which every generator and discriminator
# component receives and the unconditional ones ignore.

class Labelled:
    """A conditional component's share: the classes it is built with (the context num_classes),
    refused in one line where the data has none. Mixed in before the component's base."""

    conditional = True

    def __init__(self, settings=None, num_classes: int | None = None, **context):
        super().__init__(settings)
        self.num_classes = num_classes

    def classes(self, key: str) -> int:
        require(self.num_classes is not None, key, "an unconditional one (dcgan, conv) on data without "
                "class labels (model.num_classes=null); conditional ones need data that declares "
                "ClassLabels (data=digits | fashion_mnist | mnist)", self.registry_name)
        return self.num_classes


@GENERATORS.register("conditional_dcgan")
class ConditionalDCGANGenerator(Labelled, Generator):
    """ConditionalGenerator: the dcgan generator with class-conditional batch norm."""

    Settings = DCGANGeneratorSettings

    def network(self, latent_dim, image_shape):
        return ConditionalGenerator(latent_dim, image_shape, self.classes("model.generator"),
                                    self.settings.base_channels)


@dataclasses.dataclass
class ProjectionSettings(Settings):
    base_channels: int = positive_int(64)  # widths base, 2*base of the stride-2 convolutions
    norm: str = choice("none", D_NORMS)  # after all but the first convolution (Discriminator)


@DISCRIMINATORS.register("projection")
class Projection(Labelled, ConvDiscriminator):
    """ProjectionDiscriminator: the conv discriminator's trunk with a projection head (global)."""

    Settings = ProjectionSettings

    def network(self, image_shape, outputs):
        return ProjectionDiscriminator(image_shape, outputs, self.classes("model.discriminator"),
                                       self.settings.base_channels, self.settings.norm)


__all__ += ["ConditionalDCGANGenerator", "Labelled", "Projection"]
