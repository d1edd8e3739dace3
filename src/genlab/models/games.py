"""The DCGAN's discriminator games (`model.d_mode`): one small component each, registered in GAMES.

A game says how many outputs D has per location, what D judges in the real/fake game (`view`), how
an output becomes realness, D's and G's losses and any extra sample grids. It is built from its
config node (`model.d_mode=noise_head`, or `model/d_mode=noise_head model.d_mode.aux_weight_d=2`:
its settings live in its own node) and receives what it plays with as arguments: D's scoring
function (images in [0, 1] -> D's raw outputs), the corruption and the adversarial loss component
(genlab.models.adversarial.LOSSES); it never sees the GAN that plays it. So a new game, settings
included, is one registered class (and its conf/model/d_mode/<name>.yaml) and nothing else. Every
game works with every corruption, schedule and discriminator head; outputs are [B, K, L] (K per
location, L locations) and every loss is averaged over images and locations
(genlab.models.adversarial).

    plain           D sees clean real and fake.
    instance_noise  D sees corruption(real) and corruption(fake), fresh draws for each (Sonderby et
                    al. 2016); G's gradient flows through the corruption. What the corruption
                    erases, D cannot see: under a constant blur G is free to fill high frequencies
                    with checkerboard artefacts (a one-epoch Fashion-MNIST run of the earlier
                    32-channel preset: test/stat_fd 219 against 26 for plain); let the blur decay (corruption.schedule.kind=linear), as
                    StyleGAN3 does.
    three_class     D has 3 logits: real / fake / degraded real (= corruption(real)), trained with
                    cross-entropy; G is trained to be classified real. s = logit_real -
                    logsumexp(logit_fake, logit_degraded), so -log p(real | x) = softplus(-s) and the
                    G loss is ns's. Only loss=ns (a 3-way softmax has no hinge or WGAN form here).
    noise_head      D has the real/fake logit (on clean images) and a regression head predicting the
                    level of corrupted images, as SS-GAN (Chen et al. 2019) predicts rotations: D's
                    head loss on degraded real (weight model.d_mode.aux_weight_d), G's on degraded
                    fake (weight model.d_mode.aux_weight_g), so G is rewarded when its fakes
                    degrade the way real images do.
                    Like SS-GAN, D does not train its head on fakes (G and D could collude there).
                    Levels are drawn per image uniformly from the corruption's level_range, or from
                    [0, current level] when it has none (one fixed level would give nothing to
                    regress); the head predicts level / level_scale, level_scale = the range's upper
                    end or the configured level, so the target is unitless in [0, 1] for any kind.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from genlab.registry import Component, Registry
from genlab.settings import Settings, nonnegative

if TYPE_CHECKING:
    from genlab.corruption import Corruption
    from genlab.models.adversarial import AdversarialLoss
    from genlab.seeding import ExampleNoise

GAMES: Registry[type[Game]] = Registry("discriminator game", "model.d_mode")


class Game(Component):
    """One discriminator game, built as cls(settings, score=, corruption=, loss=):

    score       images in [0, 1] -> D's raw outputs [B, K, L] (K = `outputs`)
    corruption  the run's genlab.corruption.Corruption
    loss        the adversarial loss component (d(s_real, s_fake), g(s_fake))

    Class attributes: `outputs` (D's outputs per location), `losses` (the model.loss names it
    supports; None: every one), `uses_corruption` (False: the corruption never reaches D, so a
    sweep over corruptions gives this game nothing new to run) and `takes_labels` (True: D's
    outputs all come from the family, which passes a conditional D the labels; a game that calls
    `score` itself cannot, and refuses a conditional model).
    """

    outputs: ClassVar[int] = 1
    losses: ClassVar[tuple[str, ...] | None] = None
    uses_corruption: ClassVar[bool] = True
    takes_labels: ClassVar[bool] = False

    def __init__(self, settings=None, *, score: Callable[[Tensor], Tensor], corruption: Corruption,
                 loss: AdversarialLoss):
        super().__init__(settings)
        self.score, self.corruption, self.loss = score, corruption, loss

    def view(self, x: Tensor, generator: torch.Generator | ExampleNoise | None = None) -> Tensor:
        """What D judges in the real/fake game, images in [0, 1]; random draws from `generator`
        when given (evaluations), else the training stream."""
        return x

    def realness(self, out: Tensor) -> Tensor:
        """D's outputs [B, K, L] -> realness logits [B, L] (> 0: judged real)."""
        return out[:, 0]

    def d_loss(self, out_real: Tensor, out_fake: Tensor, real: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """D's game loss (penalties are added by the model) from D's outputs on the views of real
        and fake images; `real` is the clean batch, for games that degrade it themselves."""
        return self.loss.d(self.realness(out_real), self.realness(out_fake)), {}

    def g_loss(self, out_fake: Tensor, fake: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """G's loss from D's outputs on the view of `fake` (with gradient to G)."""
        return self.loss.g(self.realness(out_fake)), {}

    def grids(self, real: Tensor) -> dict[str, Tensor]:
        """Extra sample grids: by default what the corruption does to real images now (a fixed
        draw), where the corruption is part of the game."""
        c = self.corruption
        if not self.uses_corruption or c.kind == "none":
            return {}
        return {"degraded_real": c(real, generator=torch.Generator().manual_seed(0)).clamp(0, 1)}


@GAMES.register("plain")
class Plain(Game):
    uses_corruption = False
    takes_labels = True


@GAMES.register("instance_noise")
class InstanceNoise(Game):
    takes_labels = True

    def view(self, x, generator=None):
        return self.corruption(x, generator=generator)


REAL, FAKE, DEGRADED = 0, 1, 2  # three_class labels


@GAMES.register("three_class")
class ThreeClass(Game):
    outputs = 3
    losses = ("ns",)

    def realness(self, out):
        return out[:, REAL] - torch.logsumexp(out[:, REAL + 1:], dim=1)

    def d_loss(self, out_real, out_fake, real):
        out_degraded = self.score(self.corruption(real))
        label = torch.full((len(real), out_real.shape[2]), REAL, device=real.device)
        loss = (F.cross_entropy(out_real, label) + F.cross_entropy(out_fake, label + FAKE)
                + F.cross_entropy(out_degraded, label + DEGRADED))
        return loss, {"d_degraded_acc": (out_degraded.argmax(1) == DEGRADED).float().mean()}


@dataclasses.dataclass
class NoiseHeadSettings(Settings):
    aux_weight_d: float = nonnegative(1.0)  # weight of D's level-regression loss (on degraded real)
    aux_weight_g: float = nonnegative(0.2)  # weight of G's level-regression loss (on degraded fake)


@GAMES.register("noise_head")
class NoiseHead(Game):
    outputs = 2
    Settings = NoiseHeadSettings

    def __init__(self, settings=None, **context):
        super().__init__(settings, **context)
        c = self.corruption
        self.level_scale = float(c.level_range[1] if c.level_range else c.level) or 1.0

    def level_loss(self, x: Tensor) -> Tensor:
        """Mean squared error of D's estimate of level / level_scale at every location, on x
        corrupted at per-image levels (module docstring); unitless."""
        c, n = self.corruption, len(x)
        if c.level_range is not None:
            levels = c.sample_levels(n, device=x.device, dtype=x.dtype)
        else:
            levels = c.current_level * torch.rand(n, device=x.device, dtype=x.dtype)
        prediction = self.score(c(x, level=levels))[:, 1]
        return F.mse_loss(prediction, (levels / self.level_scale)[:, None].expand_as(prediction))

    def d_loss(self, out_real, out_fake, real):
        loss, _ = super().d_loss(out_real, out_fake, real)
        aux = self.level_loss(real)
        return loss + self.settings.aux_weight_d * aux, {"aux_d": aux.detach()}

    def g_loss(self, out_fake, fake):
        loss, _ = super().g_loss(out_fake, fake)
        aux = self.level_loss(fake)
        return loss + self.settings.aux_weight_g * aux, {"aux_g": aux.detach()}


__all__ = ["GAMES", "Game", "InstanceNoise", "NoiseHead", "Plain", "ThreeClass"]
