"""What every genlab GAN shares: the scales, the adversarial losses and penalties, and
`AdversarialModule`, the base that owns the generator, the discriminator(s), the EMA of G, the two
optimizers and the update step.

Scales. Images are in [0, 1] wherever a user or another part of genlab sees them (data, corruption,
`generate`, grids). Generators end in tanh mapped to [0, 1], (tanh(a) + 1) / 2; discriminators get
2x - 1 in [-1, 1], the DCGAN convention. Gradient penalties (R1, WGAN-GP) are taken with respect to
that [-1, 1] input, so r1_gamma and wgan_gp's gp_weight mean what they mean in the papers.

Discriminator outputs are [B, K, L]: K outputs at each of L locations (genlab.nets.gan.
Discriminator; model.discriminator.head=global gives L = 1, patch one per location of the last
feature map).
D's realness s(x) [B, L] is a logit per location: s > 0 means "D calls this part of x real". Every
loss is per location and averaged over images and locations (`model.loss`, a component of
LOSSES; wgan_gp's settings gp_weight and wgan_drift live in its node, model.loss.gp_weight):
    ns       D: softplus(-s(real)) + softplus(s(fake))   G: softplus(-s(fake))  (Goodfellow et al. 2014)
    hinge    D: relu(1 - s(real)) + relu(1 + s(fake))    G: -s(fake)            (Lim & Ye 2017)
    wgan_gp  D: s(fake) - s(real) + gp_weight * (|grad s^(x^)| - 1)^2 + wgan_drift * s(real)^2
             G: -s(fake)   (Gulrajani et al. 2017, x^ uniform on lines between real and fake; the
             drift term of Karras et al. 2018 keeps s near 0, so its sign, hence d_real_acc and the
             adaptive schedule, still mean something). s^ is the image's mean over locations: the
             WGAN critic is linear in s, so E s^ is exactly what both players optimise, and the
             Lipschitz constraint belongs on it. (Per-location gradient norms would need one
             backward pass per location: 20 s against 0.4 s per step for a 7x7 patch head on a CPU.)
and with any loss, R1 (Mescheder et al. 2018): r1_gamma / 2 * E_images E_locations |grad_x s_l(x)|^2
on the real images D judges (0 = off). With one location that is the usual R1, computed exactly;
with several, one backward pass of sum_l v_l s_l with Rademacher signs v gives an unbiased estimate
(the cross terms have mean 0). Images never interact inside D (no normalisation across the batch
unless model.discriminator.norm=batch, which is refused with R1 and WGAN-GP), so each image's gradient of the batch
sum is its own.

ema_decay keeps an exponential moving average of the generator's weights for sampling (Karras et
al. 2018), warmed up as decay_t = min(decay, (1 + t) / (10 + t)) over G steps t.

The update (manual optimisation): one D step per batch and one G step every `n_critic` batches,
on the fake batch D was just shown (with its graph kept for that batch, as the textbook DCGAN loop
does); D's weights get no gradient from G's loss. The corruption schedule counts the real images
seen after every step; the adaptive schedule hears D's mean real sign accuracy every
`ada_interval` D steps (ADA's every-4-minibatches rhythm), the only point where a training step
waits for the device. Lightning counts every optimizer step in trainer.global_step, so a run of N
batches ends near global_step 2N.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genlab.config import require
from genlab.corruption import AdaptiveSchedule, as_corruption
from genlab.models.common import GenerativeModule, log_this_step
from genlab.nets.gan import DISCRIMINATORS
from genlab.registry import Component, Registry
from genlab.settings import Settings, nonnegative, positive, positive_int, setting


def to_signed(x: Tensor) -> Tensor:
    """[0, 1] images -> [-1, 1], what discriminators and the restorer take."""
    return 2 * x - 1


def to_image(a: Tensor) -> Tensor:
    """Generator output -> image in [0, 1] via tanh."""
    return (torch.tanh(a) + 1) / 2


# --- the adversarial losses (`model.loss`), components of every GAN and of its game ----------------

LOSSES: Registry[type[AdversarialLoss]] = Registry("adversarial loss", "model.loss")


class AdversarialLoss(Component):
    """D's and G's adversarial losses from realness [B, L], averaged over images and locations,
    and the loss's own penalty on D (`penalty`). `penalises_gradients`: the penalty is a gradient
    of one image's score (refused with a discriminator that mixes images, as R1 is)."""

    penalises_gradients = False

    def d(self, s_real: Tensor, s_fake: Tensor) -> Tensor:
        raise NotImplementedError

    def g(self, s_fake: Tensor) -> Tensor:
        return -s_fake.mean()

    def penalty(self, score: Callable[[Tensor], Tensor], real_in: Tensor, fake_in: Tensor,
                s_real: Tensor) -> tuple[Tensor | None, dict[str, Tensor]]:
        """(the penalty added to D's loss or None, what to log); arguments as d_penalties'."""
        return None, {}


@LOSSES.register("ns")
class NonSaturating(AdversarialLoss):
    def d(self, s_real, s_fake):
        return F.softplus(-s_real).mean() + F.softplus(s_fake).mean()

    def g(self, s_fake):
        return F.softplus(-s_fake).mean()


@LOSSES.register("hinge")
class Hinge(AdversarialLoss):
    def d(self, s_real, s_fake):
        return F.relu(1 - s_real).mean() + F.relu(1 + s_fake).mean()


@dataclasses.dataclass
class WGANGPSettings(Settings):
    gp_weight: float = nonnegative(10.0)  # weight of the gradient penalty
    wgan_drift: float = nonnegative(1e-3)  # weight of s(real)^2, keeps D's output centred on 0


@LOSSES.register("wgan_gp")
class WGANGP(AdversarialLoss):
    Settings = WGANGPSettings
    penalises_gradients = True

    def d(self, s_real, s_fake):
        return (s_fake - s_real).mean()

    def penalty(self, score, real_in, fake_in, s_real):
        gp = gradient_penalty(score, real_in, fake_in)
        s = self.settings
        return s.gp_weight * gp + s.wgan_drift * s_real.pow(2).mean(), {"gp": gp.detach()}


def r1_penalty(s_real: Tensor, real_in: Tensor) -> Tensor:
    """E_images E_locations |grad_x s_l(x)|^2 (module docstring): exact for one location, an
    unbiased single-pass estimate for several. real_in requires grad; s_real [B, L] comes from it."""
    locations = s_real.shape[1]
    signs = torch.ones_like(s_real) if locations == 1 else torch.randint_like(s_real, 2) * 2 - 1
    (grad,) = torch.autograd.grad((signs * s_real).sum(), real_in, create_graph=True)
    return grad.pow(2).flatten(1).sum(1).mean() / locations


def gradient_penalty(score: Callable[[Tensor], Tensor], real_in: Tensor, fake_in: Tensor) -> Tensor:
    """WGAN-GP's E (|grad s^(x^)| - 1)^2 with s^ the image's mean realness over locations."""
    eps = torch.rand(len(real_in), 1, 1, 1, device=real_in.device, dtype=real_in.dtype)
    x_hat = (eps * real_in.detach() + (1 - eps) * fake_in.detach()).requires_grad_(True)
    (grad,) = torch.autograd.grad(score(x_hat).mean(1).sum(), x_hat, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - 1).pow(2).mean()


def ema_copy(net: nn.Module, decay: float | None) -> nn.Module | None:
    return None if decay is None else copy.deepcopy(net).requires_grad_(False)


@torch.no_grad()
def ema_update(ema: nn.Module, net: nn.Module, decay: float, updates: Tensor) -> None:
    """One EMA step; `updates` (G steps so far) stays on the device, so this never waits for it."""
    t = updates.float()
    weight = 1 - torch.clamp((1 + t) / (10 + t), max=decay)
    for pe, p in zip(ema.parameters(), net.parameters(), strict=True):
        pe.lerp_(p, weight)
    for be, b in zip(ema.buffers(), net.buffers(), strict=True):  # batch-norm statistics
        be.copy_(b)


def _betas(value, key: str) -> None:
    ok = isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2
    ok = ok and all(isinstance(b, int | float) and not isinstance(b, bool) and 0 <= b < 1 for b in value)
    require(ok, key, "[beta1, beta2], each in [0, 1)", value)


def _ema_decay(value, key: str) -> None:
    ok = value is None or (isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < 1)
    require(ok, key, "null (off) or a number in (0, 1)", value)


@dataclasses.dataclass
class AdversarialSettings(Settings):
    """The settings every genlab GAN shares; a family's Settings derives from it."""

    corruption: object = None  # the run's corruption (model.corruption: ${corruption}), a Corruption or its config
    loss: str | dict = "ns"  # LOSSES: ns | hinge | wgan_gp
    discriminator: str | dict = "conv"  # genlab.nets.gan.DISCRIMINATORS
    lr: float = positive(2e-4)
    betas: list[float] = setting(rule=_betas, factory=lambda: [0.5, 0.999])  # Adam's, both networks
    n_critic: int = positive_int(1)  # D steps per G step
    r1_gamma: float = nonnegative(0.0)  # R1 penalty gamma on real images; 0 = off
    ema_decay: float | None = setting(None, _ema_decay)  # EMA of G's weights for sampling; None = off
    ada_interval: int = positive_int(4)  # adaptive corruption schedule: D steps between its updates


class AdversarialModule(GenerativeModule):
    """The base of genlab's GANs. A subclass calls `init_adversarial` with its checked settings,
    builds `generator` and its discriminators (from `d_net`, the discriminator recipe), lists the
    latter's parameters in `d_parameters()`, and calls `adversarial_step` from training_step."""

    generator: nn.Module

    def init_adversarial(self, s: AdversarialSettings, num_classes: int | None = None) -> None:
        """The shared components (the adversarial loss `gan_loss`, the discriminator recipe
        `d_net`, built with the data's num_classes for a conditional one) and the corruption,
        before any network is built."""
        self.automatic_optimization = False
        self.gan_loss = LOSSES.build(s.loss, "model.loss")
        self.d_net = DISCRIMINATORS.build(s.discriminator, "model.discriminator", num_classes=num_classes)
        if s.r1_gamma > 0 or self.gan_loss.penalises_gradients:
            self.d_net.allow_gradient_penalty("model.discriminator")
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))
        self.register_buffer("ada_accuracy", torch.zeros(()))  # summed since the last update
        self._ada_steps = 0
        self.corruption = as_corruption(s.corruption)

    def init_ema(self, decay: float | None) -> None:
        """After `generator` exists: its EMA copy (or None)."""
        self.g_ema = ema_copy(self.generator, decay)

    def d_parameters(self) -> list[nn.Parameter]:
        raise NotImplementedError

    # -- the shared pieces of D's loss ------------------------------------------------------------
    def d_penalties(self, score: Callable[[Tensor], Tensor], real_in: Tensor, fake_in: Tensor,
                    s_real: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss's own penalty (WGAN-GP's gradient penalty and drift) and R1 (r1_gamma > 0), summed.

        score: signed images -> realness [B, L]; real_in, fake_in: D's signed inputs; real_in must
        require grad when r1_gamma > 0, and s_real = score(real_in) must come from it.
        """
        hp = self.hparams
        total = s_real.new_zeros(())
        penalty, logs = self.gan_loss.penalty(score, real_in, fake_in, s_real)
        if penalty is not None:
            total = total + penalty
        if hp.r1_gamma > 0:
            r1 = r1_penalty(s_real, real_in)
            total = total + 0.5 * hp.r1_gamma * r1
            logs["r1"] = r1.detach()
        return total, logs

    # -- the update ---------------------------------------------------------------------------
    def is_g_step(self, batch_idx: int) -> bool:
        return (batch_idx + 1) % self.hparams.n_critic == 0

    def adversarial_step(self, d_loss: Tensor, logs: dict[str, Tensor],
                         generator_loss: Callable[[], tuple[Tensor, dict[str, Tensor]]],
                         batch_idx: int, n_images: int) -> dict[str, Tensor]:
        """D's step on `d_loss`; on G steps (is_g_step) G's step on generator_loss(), computed with
        D's weights frozen, and the EMA; the corruption schedule; logging. logs must hold
        d_real_acc (a device scalar)."""
        opt_d, opt_g = self.optimizers()
        opt_d.zero_grad(set_to_none=True)
        self.manual_backward(d_loss)
        opt_d.step()
        out = {"d_loss": d_loss.detach()}
        if self.is_g_step(batch_idx):
            with self.toggled_optimizer(opt_g):
                g_loss, g_logs = generator_loss()
                opt_g.zero_grad(set_to_none=True)
                self.manual_backward(g_loss)
                opt_g.step()
            if self.g_ema is not None:
                ema_update(self.g_ema, self.generator, self.hparams.ema_decay, self.ema_updates)
                self.ema_updates += 1
            out["g_loss"] = g_loss.detach()
            logs.update(g_logs)
        self._feed_schedule(logs["d_real_acc"])
        self.corruption.step(n_images * self.trainer.world_size)
        if log_this_step(self):
            self.log_dict({f"train/{k}": v for k, v in out.items()}, prog_bar=True)
            self.log_dict({f"train/{k}": v for k, v in logs.items()})
            self.log("train/corruption_level", self.corruption.current_level)
        return out

    def _feed_schedule(self, accuracy: Tensor) -> None:
        """Sum D's real sign accuracy on the device; every ada_interval D steps hand the mean
        (over the steps and the DDP ranks) to the adaptive schedule. Other schedules ignore it."""
        if not isinstance(self.corruption.schedule, AdaptiveSchedule):
            return
        self.ada_accuracy += accuracy.detach().float()
        self._ada_steps += 1
        if self._ada_steps == self.hparams.ada_interval:
            mean = self.trainer.strategy.reduce(self.ada_accuracy / self._ada_steps, reduce_op="mean")
            self.corruption.update(float(mean))  # the one host synchronisation
            self.ada_accuracy.zero_()
            self._ada_steps = 0

    # the steps counted towards the next adaptive update travel with the checkpoint (the sum is a buffer)
    def get_extra_state(self) -> dict:
        return {"ada_steps": self._ada_steps}

    def set_extra_state(self, state: dict) -> None:
        self._ada_steps = int(state["ada_steps"])

    def configure_optimizers(self):
        hp = self.hparams
        betas = tuple(hp.betas)
        return [self.adam(self.d_parameters(), lr=hp.lr, betas=betas),
                self.adam(self.generator.parameters(), lr=hp.lr, betas=betas)]
