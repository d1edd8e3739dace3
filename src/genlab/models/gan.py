"""GANs where noise is a learning signal: a DCGAN whose discriminator meets the corruption in one
of several games (`model.d_mode`, genlab.models.games), and a restoration GAN that learns to undo
the corruption. Both are AdversarialModules (genlab.models.adversarial: scales, losses, penalties,
the update) composed from components: the adversarial loss (`model.loss`), the generator
(`model.generator`) and the discriminator (`model.discriminator`, genlab.nets.gan), each a config
node; the DCGAN's game gets D's scoring function, the corruption and the loss, never the GAN.

Metrics (train/* per step; val/* and test/* are epoch values):
    train/d_loss, train/g_loss   each network's full loss, penalties and auxiliary terms included
    train/d_real_acc             fraction of the real images (the view D sees) and locations with s > 0
    train/corruption_level       the corruption's current level, in its own units
    train/gp, train/r1, train/aux_d, train/aux_g, train/d_degraded_acc   where they apply
    val/d_real_acc               as train/d_real_acc on validation images; a train/val gap is D
                                 overfitting, the thing instance noise and ADA fight
    val/stat_fd                  (DCGAN) genlab.metrics.image_stats.stat_fd: unitless, >= 0, lower
                                 is better; the cheap per-epoch monitor (objective for model=dcgan)
    val/psnr, val/psnr_input, val/l1   (restoration) restored vs clean in dB (higher is better);
                                 the degraded input vs clean, the baseline; mean absolute error
                                 per pixel in [0, 1] units (lower is better). Monitor val/psnr, max.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from genlab.capabilities import RealImages
from genlab.config import require
from genlab.metrics.image_stats import image_statistics, moments, stat_fd
from genlab.metrics.psnr import psnr
from genlab.models.adversarial import AdversarialModule, AdversarialSettings, to_image, to_signed
from genlab.models.common import FAMILIES, eval_means, eval_noise, log_eval, triplets
from genlab.models.conditional import (
    check_labels,
    cycle_labels,
    num_classes_rule,
    require_class_data,
)
from genlab.models.factor_heads import FACTOR_HEADS
from genlab.models.games import GAMES
from genlab.models.named import NamedUnits, labelled_fraction_rule, sweep
from genlab.nets import conditional as _conditional_nets  # noqa: F401  (registers conditional_dcgan, projection)
from genlab.nets.gan import GENERATORS, RESTORERS
from genlab.seeding import draw
from genlab.settings import flag, nonnegative, nonnegative_int, positive_int, setting

# --- DCGAN --------------------------------------------------------------------------------------


@dataclasses.dataclass
class DCGANSettings(AdversarialSettings):
    d_mode: str | dict = "plain"  # genlab.models.games.GAMES: D's game with the corruption
    generator: str | dict = "dcgan"  # genlab.nets.gan.GENERATORS
    latent_dim: int = positive_int(64)
    n_grid: int = positive_int(64)  # real images in the game's grids (degraded_real)
    num_classes: int | None = setting(None, num_classes_rule)  # the data's: conditional networks' classes
    # named factors (preset model=named_gan): G's first latent units carry them, D reads them back
    named_factors: dict | None = None  # checked by genlab.models.named.NamedUnits
    labelled_fraction: float = setting(1.0, labelled_fraction_rule)
    labelled_seed: int = nonnegative_int(0)
    factor_head: str | dict = "ss_info"  # genlab.models.factor_heads.FACTOR_HEADS (with named_factors)


@FAMILIES.register("dcgan")
class DCGAN(AdversarialModule):
    """G: the `generator` component's network (dcgan, 28x28, base_channels=64: Linear(latent,
    128*7*7)-BN-ReLU-ConvT(128, 64)-BN-ReLU-ConvT(64, 1)-tanh, Radford et al. 2016); D: the
    `discriminator` component's network with the game's (GAMES[d_mode]) outputs per location.

    Conditional (preset model=cdcgan): a conditional generator (conditional_dcgan) with a conditional
    discriminator (projection), both or neither, on data with class labels (genlab.nets.conditional,
    genlab.models.conditional). The fakes of a batch get the real batch's labels; D judges real
    images with their labels and fakes with theirs. Only games that leave D's calls to the family
    take labels (plain, instance_noise); the others refuse a conditional model.

    Named factors (preset model=named_gan, `named_factors` as the VAE's, genlab.models.named): G's
    first latent units carry the factors' codes, drawn uniformly over each factor's range (circle:
    (cos phi, sin phi), phi uniform; the rest of z standard normal), and D has the factor head's
    extra outputs after the game's (`factor_head`, genlab.models.factor_heads: semi-supervised
    InfoGAN), trained on the labelled real images (`labelled_fraction` of the grid, chosen by
    `labelled_seed`, as for the VAE) and on the fakes' given codes. val/test `<factor>_err_deg`
    (or `_mae`): how far D's head reads real images' factors; `generate_named` generates with
    commanded codes (NamedGeneration). Not with a conditional generator."""

    Settings = DCGANSettings

    @classmethod
    def reads_corruption_when(cls) -> dict[str, tuple[str, ...]] | None:
        return {"d_mode": tuple(name for name, game in GAMES.items() if game.uses_corruption)}

    def __init__(self, image_shape, **settings):
        super().__init__()
        s = self.configure(image_shape, settings)
        self.init_adversarial(s, num_classes=s.num_classes)
        self.game = GAMES.build(s.d_mode, "model.d_mode", score=self.game_out, corruption=self.corruption,
                                loss=self.gan_loss)
        losses, loss = self.game.losses, self.gan_loss.registry_name
        require(losses is None or loss in losses, "model.loss",
                f"{' | '.join(losses or ())} when model.d_mode={self.game.registry_name}", loss)
        g_net = GENERATORS.build(s.generator, "model.generator", num_classes=s.num_classes)
        self.conditional = g_net.conditional
        require(self.d_net.conditional == g_net.conditional, "model.discriminator",
                f"{'a conditional one (projection)' if g_net.conditional else 'an unconditional one (conv)'}"
                f" with model.generator={g_net.registry_name}", self.d_net.registry_name)
        if self.conditional:
            require(self.game.takes_labels, "model.d_mode", " | ".join(
                n for n, game in GAMES.items() if game.takes_labels) + " with a conditional generator "
                "(this game scores images without their labels)", self.game.registry_name)
            self.num_classes = s.num_classes  # declares ClassConditional (genlab.capabilities)
        self.named = (NamedUnits(s.named_factors, s.latent_dim, s.labelled_fraction, s.labelled_seed)
                      if s.named_factors is not None else None)
        self.factor_head = (FACTOR_HEADS.build(s.factor_head, "model.factor_head", named=self.named)
                            if self.named is not None else None)
        if self.named is not None:
            require(not self.conditional, "model.named_factors", "null with a conditional generator",
                    s.named_factors)
            self.named_factor_kinds = self.named.kinds()  # declares NamedGeneration (genlab.capabilities)
        self.generator = g_net.network(s.latent_dim, self.image_shape)
        head_outputs = self.factor_head.outputs if self.factor_head is not None else 0
        self.discriminator = self.d_net.network(self.image_shape, self.game.outputs + head_outputs)
        self.init_ema(s.ema_decay)
        self.means = eval_means(["d_real_acc", *(self.named.metrics() if self.named else [])])
        self._moments: dict[str, list[Tensor]] = {}
        heads = {"factor_head": self.factor_head} if self.factor_head is not None else {}
        self.save_settings(s, d_mode=self.game, loss=self.gan_loss, generator=g_net,
                           discriminator=self.d_net, corruption=self.corruption, **heads)

    def d_parameters(self):
        return list(self.discriminator.parameters())

    # -- the networks ---------------------------------------------------------------------------
    def z(self, n: int) -> Tensor:
        return self.g_input(torch.randn(n, self.hparams.latent_dim, device=self.device))

    def g_input(self, z: Tensor) -> Tensor:
        """Standard normal draws -> G's input: with named factors, their units mapped to codes
        drawn uniformly over each factor's range (NamedUnits.from_normal); else z itself."""
        return z if self.named is None else self.named.from_normal(z)

    def labels_of(self, batch) -> Tensor | None:
        """A batch's class labels for a conditional model (None for an unconditional one)."""
        return batch[1] if self.conditional else None

    def g_out(self, g, z: Tensor, y: Tensor | None = None) -> Tensor:
        """G's (or its EMA's) pre-activation images; y: the classes of a conditional G."""
        return g(z) if y is None else g(z, y)

    def d_raw(self, x_signed: Tensor, y: Tensor | None = None) -> Tensor:
        """D's raw outputs for signed images; y: their classes for a conditional D."""
        return self.discriminator(x_signed) if y is None else self.discriminator(x_signed, y)

    def d_out(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """D's raw outputs [B, K, L] for images x in [0, 1] (and classes y, when conditional)."""
        return self.d_raw(to_signed(x), y)

    def game_out(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """The game's share of D's outputs, [B, game.outputs, L] (the factor head's follow it)."""
        return self.d_out(x, y)[:, : self.game.outputs]

    def head_out(self, out: Tensor) -> Tensor:
        """The factor head's share of D's outputs [B, K, L]: [B, named units, L]."""
        return out[:, self.game.outputs:]

    def realness(self, out: Tensor) -> Tensor:
        """s [B, L], a logit per location (> 0: judged real), as the game defines it."""
        return self.game.realness(out[:, : self.game.outputs])

    @torch.no_grad()
    def generate(self, n: int, z: Tensor | None = None) -> Tensor:
        """n samples in [0, 1], from the EMA generator when there is one; a conditional model's of
        the classes 0, 1, ..., num_classes - 1 in turn (genlab.models.conditional.cycle_labels)."""
        if self.conditional:
            return self.generate_class(cycle_labels(n if z is None else len(z), self.num_classes), z)
        g = self.g_ema if self.g_ema is not None else self.generator
        return to_image(g(self.z(n) if z is None else z))

    @torch.no_grad()
    def generate_named(self, values) -> Tensor:
        """Images with the named units set to the commanded codes (NamedGeneration): values maps
        factor names to codes [n, units] (circle: (cos, sin)); the rest of z drawn as in training."""
        require(self.named is not None, "model.named_factors", "a mapping such as {orientation: circle} "
                "to generate with commanded factors", None)
        n = len(next(iter(values.values())))
        g = self.g_ema if self.g_ema is not None else self.generator
        return to_image(g(self.named.command(self.z(n), values)))

    @torch.no_grad()
    def generate_class(self, labels: Tensor, z: Tensor | None = None) -> Tensor:
        """A conditional model's samples of the requested classes (ClassConditional)."""
        require(self.conditional, "model.generator", "conditional_dcgan to generate given classes",
                self.hparams.generator.get("name"))
        labels = check_labels(labels, self.num_classes).to(self.device)
        g = self.g_ema if self.g_ema is not None else self.generator
        return to_image(g(self.z(len(labels)) if z is None else z, labels))

    def sample_grids(self, real: Tensor) -> dict[str, Tensor]:
        """The game's own grids (what the corruption does to real images, where it is part of the
        game; the sample-grid callback draws the generated samples itself), and with named
        factors one traversal each: 8 rows of fixed z, the factor's units swept over 8 values."""
        grids = self.game.grids(real[: self.hparams.n_grid])
        for name in self.named.units if self.named is not None else ():
            units, values = sweep(self, name, 8)
            z = self.z(8).unsqueeze(1).repeat(1, len(values), 1)
            z[:, :, units] = values.to(z)
            grids[f"traversal_{name}"] = self.generate(len(values) * 8, z.flatten(0, 1))
        return grids

    # -- the losses -------------------------------------------------------------------------------
    def discriminator_loss(self, real: Tensor, fake: Tensor, y: Tensor | None = None,
                           factors: Tensor | None = None,
                           code: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """D's loss for real and fake images in [0, 1] (no gradient reaches G), and what to log;
        y: the classes of both (a conditional model: the fakes have the real batch's labels);
        with named factors, factors: the real images' factor levels, code: the fakes' given code."""
        real_in = to_signed(self.game.view(real)).detach().requires_grad_(self.hparams.r1_gamma > 0)
        fake_in = to_signed(self.game.view(fake)).detach()
        out_real, out_fake = self.d_raw(real_in, y), self.d_raw(fake_in, y)
        s_real = self.realness(out_real)
        k = self.game.outputs
        loss, logs = self.game.d_loss(out_real[:, :k], out_fake[:, :k], real)
        if self.factor_head is not None:
            aux, aux_logs = self.factor_head.d_loss(self.head_out(out_real), factors,
                                                    self.head_out(out_fake), code)
            loss, logs = loss + aux, {**logs, **aux_logs}
        penalty, penalty_logs = self.d_penalties(lambda x: self.realness(self.d_raw(x, y)),
                                                 real_in, fake_in, s_real)
        return loss + penalty, {"d_real_acc": (s_real > 0).float().mean(), **logs, **penalty_logs}

    def generator_loss(self, fake: Tensor, y: Tensor | None = None,
                       code: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """G's loss on fake images that carry G's graph (gradients reach G through D and, for games
        whose view corrupts, through the corruption), and what to log; y: the fakes' classes;
        code: with named factors, the code G was given."""
        out = self.d_out(self.game.view(fake), y)
        loss, logs = self.game.g_loss(out[:, : self.game.outputs], fake)
        if self.factor_head is not None:
            aux, aux_logs = self.factor_head.g_loss(self.head_out(out), code)
            loss, logs = loss + aux, {**logs, **aux_logs}
        return loss, logs

    # -- Lightning ----------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if self.conditional:
            require_class_data(self.trainer.datamodule, self.num_classes,
                               f"model.generator={self.hparams.generator['name']}")
        if self.named is not None:
            self.named.bind_data(self.trainer.datamodule)

    def training_step(self, batch, batch_idx):
        real, y = batch[0], self.labels_of(batch)
        n = real.shape[0]
        z = self.z(n)
        factors, code = (batch[1], z[:, : self.named.n_named]) if self.named is not None else (None, None)
        # with a G step in this batch, the fake batch keeps its graph for G's loss (one G forward)
        with torch.set_grad_enabled(self.is_g_step(batch_idx)):
            fake = to_image(self.g_out(self.generator, z, y))
        d_loss, logs = self.discriminator_loss(real, fake.detach(), y, factors, code)
        return self.adversarial_step(d_loss, logs, lambda: self.generator_loss(fake, y, code), batch_idx, n)

    def _eval_step(self, stage: str, batch) -> None:
        real, y = batch[0], self.labels_of(batch)
        index = batch[2]
        g = eval_noise(stage, index)  # each image's own draws, in any process (eval_noise)
        z = self.g_input(draw((len(real), self.hparams.latent_dim), g, normal=True, device=self.device))
        # a conditional model's fakes have the real images' classes, as in training
        fake = self.generate(len(real), z) if y is None else self.generate_class(y, z)
        for name, x in (("real", real), ("fake", fake)):
            m = moments(torch.from_numpy(image_statistics(x.float().cpu())))
            self._moments[name] = [a + b for a, b in zip(self._moments.get(name, [0, 0, 0]), m,
                                                         strict=True)]
        out = self.d_out(self.game.view(real, generator=g), y)
        s_real = self.realness(out)
        log_eval(self, stage, {"d_real_acc": (s_real > 0).float().mean(1)})
        if self.named is not None:  # how far D's head reads the real images' factors
            log_eval(self, stage, self.named.errors(self.factor_head.read(self.head_out(out)), batch[1]))

    def _log_stat_fd(self, stage: str) -> None:
        if not self._moments:
            return
        reduce = self.trainer.strategy.reduce
        real, fake = ([reduce(t.to(self.device), reduce_op="sum").cpu() for t in self._moments[k]]
                      for k in ("real", "fake"))
        self.log(f"{stage}/stat_fd", stat_fd(real, fake))
        self._moments = {}

    def on_validation_epoch_start(self):
        self._moments = {}

    def validation_step(self, batch, batch_idx):
        self._eval_step("val", batch)

    def on_validation_epoch_end(self):
        self._log_stat_fd("val")

    def on_test_epoch_start(self):
        self._moments = {}

    def test_step(self, batch, batch_idx):
        self._eval_step("test", batch)

    def on_test_epoch_end(self):
        self._log_stat_fd("test")


# --- restoration GAN ----------------------------------------------------------------------------


@dataclasses.dataclass
class RestorationGANSettings(AdversarialSettings):
    generator: str | dict = "unet"  # genlab.nets.gan.RESTORERS
    consistency_weight: float = nonnegative(10.0)  # weight of the re-degraded views' mean absolute difference
    degraded_d: bool = flag(False)  # a second D comparing corruption(restored) with corruption(real)
    n_fixed: int = positive_int(64)  # real training images stored to condition generate(n) on


@FAMILIES.register("restoration_gan")
class RestorationGAN(AdversarialModule):
    """A generator that restores degraded images, y = corruption(x) -> x^ = G(y), trained with

        adversarial loss (D: clean real vs restored)
        + consistency_weight * L1(corruption(x^), y)   (mean absolute pixel difference)
        + with degraded_d, a second adversarial loss (D2: y vs corruption(x^))

    The consistency term re-degrades the restoration at the same per-image levels but with fresh
    noise: the noise inside y is unknown to a restorer, and reusing it would hand G the clean image
    (for additive noise, corruption(x^) - y would be x^ - x). It is exact for a deterministic
    degradation (blur) and, for symmetric noise, is minimised at x^ = x in expectation.
    G has no noise input: the map is deterministic, as pix2pix's effectively is.

    `generate(n)` is conditional: it restores fresh corruptions of `n_fixed` real training images
    that the model stores (a buffer filled at the start of fit, so a checkpoint alone can generate),
    cycling through them when n is larger; genlab-sample mode=restore restores test images.
    Not a game of the DCGAN: the generator's input, its metrics (PSNR, not stat_fd) and `generate` all differ
    from the DCGAN's, while the adversarial pieces are shared.
    """

    @classmethod
    def reads_corruption_when(cls) -> dict[str, tuple[str, ...]] | None:
        return {}  # the degradation it undoes

    Settings = RestorationGANSettings

    def __init__(self, image_shape, **settings):
        super().__init__()
        s = self.configure(image_shape, settings)
        self.init_adversarial(s)
        g_net = RESTORERS.build(s.generator, "model.generator")
        self.generator = g_net.network(self.image_shape)
        self.discriminator = self.d_net.network(self.image_shape, 1)
        self.discriminator_degraded = self.d_net.network(self.image_shape, 1) if s.degraded_d else None
        self.init_ema(s.ema_decay)
        self.register_buffer("fixed_real", torch.zeros(s.n_fixed, *self.image_shape))
        self.means = eval_means(["psnr", "psnr_input", "l1", "d_real_acc"])
        self.save_settings(s, loss=self.gan_loss, generator=g_net, discriminator=self.d_net,
                           corruption=self.corruption)

    def d_parameters(self):
        nets = [self.discriminator, self.discriminator_degraded]
        return [p for d in nets if d is not None for p in d.parameters()]

    def on_fit_start(self):
        dm = self.trainer.datamodule
        if isinstance(dm, RealImages):
            x = dm.images("train", self.hparams.n_fixed).to(self.fixed_real)
            self.fixed_real.copy_(x[torch.arange(len(self.fixed_real)) % len(x)])

    @torch.no_grad()
    def restore(self, degraded: Tensor) -> Tensor:
        """Restored images in [0, 1] from degraded ones, with the EMA generator when there is one."""
        g = self.g_ema if self.g_ema is not None else self.generator
        return to_image(g(to_signed(degraded)))

    @torch.no_grad()
    def generate(self, n: int) -> Tensor:
        """Restorations in [0, 1] of fresh corruptions of the stored real images (see the class doc)."""
        x = self.fixed_real[torch.arange(n, device=self.device) % len(self.fixed_real)]
        return self.restore(self.corruption(x))

    def sample_grids(self, real: Tensor) -> dict[str, Tensor]:
        """degraded | restored | clean triples of validation images (a fixed corruption draw)."""
        degraded = self.corruption(real, generator=torch.Generator().manual_seed(0))
        return {"restoration": triplets(degraded.clamp(0, 1), self.restore(degraded), real)}

    def sample_modes(self, n: int, steps: int, real_fn) -> dict:
        """genlab-sample mode=restore: degraded | restored | clean triples of n test images."""
        def restore():
            x = real_fn(n)
            degraded = self.corruption(x)
            return triplets(degraded.clamp(0, 1), self.restore(degraded), x)

        return {"restore": restore}

    # -- the losses -------------------------------------------------------------------------------
    def _d_game(self, d, real: Tensor, fake: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """One discriminator's loss and penalties: real and (detached) fake images in [0, 1]."""
        real_in = to_signed(real).detach().requires_grad_(self.hparams.r1_gamma > 0)
        fake_in = to_signed(fake).detach()
        s_real, s_fake = d(real_in)[:, 0], d(fake_in)[:, 0]
        penalty, logs = self.d_penalties(lambda x: d(x)[:, 0], real_in, fake_in, s_real)
        logs["d_real_acc"] = (s_real > 0).float().mean()
        return self.gan_loss.d(s_real, s_fake) + penalty, logs

    def discriminator_loss(self, real: Tensor, degraded: Tensor, levels: Tensor,
                           restored: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        loss, logs = self._d_game(self.discriminator, real, restored)
        if self.discriminator_degraded is not None:
            # the degraded input is itself a draw of corruption(real)
            loss2, logs2 = self._d_game(self.discriminator_degraded, degraded,
                                        self.corruption(restored, level=levels))
            loss = loss + loss2
            logs["d2_real_acc"] = logs2["d_real_acc"]
        return loss, logs

    def generator_loss(self, restored: Tensor, degraded: Tensor,
                       levels: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """G's loss on restorations that carry G's graph."""
        adv = self.gan_loss.g(self.discriminator(to_signed(restored))[:, 0])
        redegraded = self.corruption(restored, level=levels)  # same levels, fresh noise
        consistency = (redegraded - degraded).abs().mean()
        loss = adv + self.hparams.consistency_weight * consistency
        logs = {"g_adv": adv.detach(), "consistency": consistency.detach()}
        if self.discriminator_degraded is not None:
            adv2 = self.gan_loss.g(self.discriminator_degraded(to_signed(redegraded))[:, 0])
            loss = loss + adv2
            logs["g_adv2"] = adv2.detach()
        return loss, logs

    # -- Lightning ----------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        real = batch[0]
        degraded, levels = self.corruption(real, return_levels=True)
        with torch.set_grad_enabled(self.is_g_step(batch_idx)):
            restored = to_image(self.generator(to_signed(degraded)))
        d_loss, logs = self.discriminator_loss(real, degraded, levels, restored.detach())
        return self.adversarial_step(d_loss, logs,
                                     lambda: self.generator_loss(restored, degraded, levels),
                                     batch_idx, real.shape[0])

    def _eval_step(self, stage: str, batch) -> None:
        real, _, index = batch
        degraded = self.corruption(real, generator=eval_noise(stage, index))
        restored = self.restore(degraded)
        s_real = self.discriminator(to_signed(real))[:, 0]
        log_eval(self, stage, {"psnr": psnr(restored, real), "psnr_input": psnr(degraded, real),
                               "l1": (restored - real).abs().flatten(1).mean(1),
                               "d_real_acc": (s_real > 0).float().mean(1)})

    def validation_step(self, batch, batch_idx):
        self._eval_step("val", batch)

    def test_step(self, batch, batch_idx):
        self._eval_step("test", batch)
