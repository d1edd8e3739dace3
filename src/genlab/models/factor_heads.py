"""The DCGAN's named-factor heads (`model.factor_head`, with `model.named_factors`): extra outputs of
D that read the named factors' codes from an image, and the loss terms that train D and G with them.

    ss_info   semi-supervised InfoGAN (Spurr et al. 2017, "Guiding InfoGAN with semi-supervision";
              Chen et al. 2016 for InfoGAN; AC-GAN's auxiliary classifier is the class analogue).
              D gets one more output per named unit (genlab.models.named: circle, (cos, sin);
              line, the standardised level) at each location, its head Q. With c the code G was
              given (the named units of its z) and t the code of a labelled real image's factors:
                  e(Q(x), c) = sum over the named units of (Q(x) - c)^2, averaged over locations
                  D's step:  aux_weight_d      * mean over the batch's labelled real images of e(Q(x), t)
                           + aux_weight_d_fake * mean over the fakes of e(Q(G(z, c)), c)
                  G's step:  aux_weight_g      * mean over the fakes of e(Q(G(z, c)), c)
              The real term ties Q to the data's factor (Spurr et al.'s supervised term on labelled
              real data); the fake terms, minimised by both players, are InfoGAN's mutual-information
              bound for c, -log Q(c | x) of a unit-variance Gaussian up to a factor 2 and a constant,
              so G is rewarded when Q can read back the code it was given. Without the real term
              (aux_weight_d = 0) Q and G agree on some code that need not be the factor: plain
              InfoGAN. A batch without labelled images adds 0 to D's loss.
The family gives the head its outputs of D (already split from the game's) as [B, units, L].
"""

from __future__ import annotations

import dataclasses

from torch import Tensor

from genlab.models.named import NamedUnits
from genlab.registry import Component, Registry
from genlab.settings import Settings, nonnegative

FACTOR_HEADS: Registry[type[FactorHead]] = Registry("named-factor head", "model.factor_head")


class FactorHead(Component):
    """Built as cls(settings, named=NamedUnits); `outputs`: D's extra outputs per location."""

    def __init__(self, settings=None, *, named: NamedUnits):
        super().__init__(settings)
        self.named = named
        self.outputs = named.n_named

    @staticmethod
    def read(pred: Tensor) -> Tensor:
        """D's head outputs [B, units, L] -> the code it reads from each image [B, units]."""
        return pred.mean(2)

    def d_loss(self, pred_real: Tensor, factors: Tensor, pred_fake: Tensor,
               code: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError

    def g_loss(self, pred_fake: Tensor, code: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError


def code_error(pred: Tensor, code: Tensor) -> Tensor:
    """e(pred, code) per image [B]: squared error summed over the units, averaged over locations;
    pred [B, units, L], code [B, units]."""
    return (pred - code[:, :, None]).pow(2).sum(1).mean(1)


@dataclasses.dataclass
class SSInfoSettings(Settings):
    aux_weight_d: float = nonnegative(1.0)  # D's step: the head's error on labelled real images
    aux_weight_d_fake: float = nonnegative(1.0)  # D's step: its error on fakes (the code G was given)
    aux_weight_g: float = nonnegative(1.0)  # G's step: the same error on fakes, for G


@FACTOR_HEADS.register("ss_info")
class SemiSupervisedInfo(FactorHead):
    Settings = SSInfoSettings

    def d_loss(self, pred_real, factors, pred_fake, code):
        """D's terms: pred_real, pred_fake [B, units, L]; factors: the real images' factor levels
        (which of them are labelled is the NamedUnits' fixed subset); code: the fakes' given code."""
        mask = self.named.labelled(factors).to(pred_real.dtype)
        real = (code_error(pred_real, self.named.targets(factors).to(pred_real)) * mask).sum()
        real = real / mask.sum().clamp(min=1)
        fake = code_error(pred_fake, code).mean()
        s = self.settings
        return (s.aux_weight_d * real + s.aux_weight_d_fake * fake,
                {"factor_real_d": real.detach(), "factor_fake_d": fake.detach()})

    def g_loss(self, pred_fake, code):
        fake = code_error(pred_fake, code).mean()
        return self.settings.aux_weight_g * fake, {"factor_g": fake.detach()}


__all__ = ["FACTOR_HEADS", "FactorHead", "SemiSupervisedInfo", "code_error"]
