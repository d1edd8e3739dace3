"""GANs where noise is a learning signal: a DCGAN whose discriminator meets the corruption in one
of four ways (`d_mode`), and a restoration GAN that learns to undo the corruption.

Scales. Images are in [0, 1] wherever a user or another part of genlab sees them (data, corruption,
`generate`, grids). Generators end in tanh mapped to [0, 1], (tanh(a) + 1) / 2 (= sigmoid(2a), so
"tanh or sigmoid" is only a factor 2 on the last layer's input); the discriminator gets 2x - 1 in
[-1, 1], the DCGAN convention. Gradient penalties (R1, WGAN-GP) are taken with respect to that
[-1, 1] input, so r1_gamma and gp_weight mean what they mean in the papers.

D's realness s(x) is a logit: s > 0 means "D calls x real". Losses (`loss`), each averaged over
the batch:
    ns       D: softplus(-s(real)) + softplus(s(fake))   G: softplus(-s(fake))  (Goodfellow et al. 2014)
    hinge    D: relu(1 - s(real)) + relu(1 + s(fake))    G: -s(fake)            (Lim & Ye 2017)
    wgan_gp  D: s(fake) - s(real) + gp_weight * (|grad s(x^)| - 1)^2 + wgan_drift * s(real)^2
             G: -s(fake)   (Gulrajani et al. 2017, x^ uniform on lines between real and fake; the
             drift term of Karras et al. 2018 keeps s near 0, so its sign, hence d_real_acc and the
             adaptive schedule, still mean something)
and with any loss, R1 (Mescheder et al. 2018): r1_gamma / 2 * E |grad_x s(x)|^2 over the real
images D judges (0 = off). ema_decay keeps an exponential moving average of the generator's
weights for sampling (Karras et al. 2018), warmed up as decay_t = min(decay, (1 + t) / (10 + t))
over G steps t so that early samples are not stuck at the initial weights.

Discriminator modes of the DCGAN (`d_mode`; every mode works with every corruption and schedule):
    plain           D sees clean real and fake.
    instance_noise  D sees corruption(real) and corruption(fake), fresh draws for each (Sonderby et
                    al. 2016); G's gradient flows through the corruption. What the corruption
                    erases, D cannot see: under a constant blur G is free to fill high frequencies
                    with checkerboard artefacts (a one-epoch Fashion-MNIST run: test/stat_fd 219
                    against 26 for plain); let the blur decay (corruption.schedule.kind=linear), as
                    StyleGAN3 does.
    three_class     D has 3 logits: real / fake / degraded real (= corruption(real)), trained with
                    cross-entropy; G is trained to be classified real. s = logit_real -
                    logsumexp(logit_fake, logit_degraded), so -log p(real | x) = softplus(-s) and the
                    G loss is ns's. Only loss=ns (a 3-way softmax has no hinge or WGAN form here).
    noise_head      D has the real/fake logit (on clean images) and a regression head predicting the
                    level of corrupted images, as SS-GAN (Chen et al. 2019) predicts rotations: D's
                    head loss on degraded real (weight aux_weight_d), G's on degraded fake (weight
                    aux_weight_g), so G is rewarded when its fakes degrade the way real images do.
                    Like SS-GAN, D does not train its head on fakes (G and D could collude there).
                    Levels are drawn per image uniformly from the corruption's level_range, or from
                    [0, current level] when it has none (one fixed level would give nothing to
                    regress); the head predicts level / level_scale, level_scale = the range's upper
                    end or the configured level, so the target is unitless in [0, 1] for any kind.
The corruption's schedule counts the real images seen (`corruption.step`) and receives D's real
sign accuracy after every D step (`corruption.update`, averaged over DDP ranks), which moves only
the adaptive schedule.

Metrics (train/* per step; val/* and test/* are epoch values):
    train/d_loss, train/g_loss   each network's full loss, penalties and auxiliary terms included
    train/d_real_acc             fraction of the real images D judges (the view it sees) with s > 0
    train/corruption_level       the corruption's current level, in its own units
    train/gp, train/r1, train/aux_d, train/aux_g, train/d_degraded_acc   where they apply
    val/d_real_acc               as train/d_real_acc on validation images; a train/val gap is D
                                 overfitting, the thing instance noise and ADA fight
    val/stat_fd                  (DCGAN) see `stat_fd`: unitless, >= 0, lower is better; the metric
                                 to monitor (objective.metric=val/stat_fd objective.mode=min)
    val/psnr, val/psnr_input, val/l1   (restoration) restored vs clean in dB (higher is better);
                                 the degraded input vs clean, the baseline; mean absolute error
                                 per pixel in [0, 1] units (lower is better). Monitor val/psnr, max.

Manual optimisation: one D step per batch and one G step every `n_critic` batches. Lightning counts
every optimizer step in trainer.global_step, so a run of N batches ends near global_step 2N.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genlab.config import require, require_choice, require_nonnegative, require_positive
from genlab.corruption import Corruption, as_corruption
from genlab.models.common import GenerativeModule, eval_means, log_eval, triplets
from genlab.nets import ConvDecoder, ConvEncoder
from genlab.nets.gan import UNet
from genlab.probe import image_statistics

D_MODES = ("plain", "instance_noise", "three_class", "noise_head")
LOSSES = ("ns", "hinge", "wgan_gp")
D_OUTPUTS = {"plain": 1, "instance_noise": 1, "three_class": 3, "noise_head": 2}
REAL, FAKE, DEGRADED = 0, 1, 2  # three_class labels


# --- pieces both GANs use ---------------------------------------------------------------------


def to_signed(x: Tensor) -> Tensor:
    """[0, 1] images -> [-1, 1], what discriminators and the restorer take."""
    return 2 * x - 1


def to_image(a: Tensor) -> Tensor:
    """Generator output -> image in [0, 1] via tanh."""
    return (torch.tanh(a) + 1) / 2


def d_adversarial(s_real: Tensor, s_fake: Tensor, loss: str) -> Tensor:
    if loss == "ns":
        return F.softplus(-s_real).mean() + F.softplus(s_fake).mean()
    if loss == "hinge":
        return F.relu(1 - s_real).mean() + F.relu(1 + s_fake).mean()
    return (s_fake - s_real).mean()  # wgan_gp; its penalty is in d_penalties


def g_adversarial(s_fake: Tensor, loss: str) -> Tensor:
    return F.softplus(-s_fake).mean() if loss == "ns" else -s_fake.mean()


def d_penalties(score: Callable[[Tensor], Tensor], real_in: Tensor, fake_in: Tensor,
                s_real: Tensor, hp: Mapping) -> tuple[Tensor, dict[str, Tensor]]:
    """WGAN-GP's gradient penalty and drift (loss=wgan_gp) and R1 (r1_gamma > 0), summed.

    real_in, fake_in are D's signed inputs; real_in must require grad when r1_gamma > 0, and
    s_real = score(real_in) must come from it.
    """
    total, logs = s_real.new_zeros(()), {}
    if hp["loss"] == "wgan_gp":
        eps = torch.rand(len(real_in), 1, 1, 1, device=real_in.device, dtype=real_in.dtype)
        x_hat = (eps * real_in.detach() + (1 - eps) * fake_in.detach()).requires_grad_(True)
        (grad,) = torch.autograd.grad(score(x_hat).sum(), x_hat, create_graph=True)
        gp = (grad.flatten(1).norm(dim=1) - 1).pow(2).mean()
        total = total + hp["gp_weight"] * gp + hp["wgan_drift"] * s_real.pow(2).mean()
        logs["gp"] = gp.detach()
    if hp["r1_gamma"] > 0:
        (grad,) = torch.autograd.grad(s_real.sum(), real_in, create_graph=True)
        r1 = grad.pow(2).flatten(1).sum(1).mean()
        total = total + 0.5 * hp["r1_gamma"] * r1
        logs["r1"] = r1.detach()
    return total, logs


def check_gan_options(loss, lr, betas, n_critic, gp_weight, wgan_drift, r1_gamma, ema_decay) -> None:
    require_choice(loss, "model.loss", LOSSES)
    require_positive(lr, "model.lr")
    ok = isinstance(betas, Sequence) and not isinstance(betas, str) and len(betas) == 2
    ok = ok and all(isinstance(b, int | float) and not isinstance(b, bool) and 0 <= b < 1 for b in betas)
    require(ok, "model.betas", "[beta1, beta2], each in [0, 1)", betas)
    require_positive(n_critic, "model.n_critic", integer=True)
    require_nonnegative(gp_weight, "model.gp_weight")
    require_nonnegative(wgan_drift, "model.wgan_drift")
    require_nonnegative(r1_gamma, "model.r1_gamma")
    ok = ema_decay is None or (isinstance(ema_decay, int | float) and not isinstance(ema_decay, bool)
                               and 0 < ema_decay < 1)
    require(ok, "model.ema_decay", "null (off) or a number in (0, 1)", ema_decay)


def ema_copy(net: nn.Module, decay: float | None) -> nn.Module | None:
    return None if decay is None else copy.deepcopy(net).requires_grad_(False)


@torch.no_grad()
def ema_update(ema: nn.Module, net: nn.Module, decay: float, updates: int) -> None:
    d = min(decay, (1 + updates) / (10 + updates))
    for pe, p in zip(ema.parameters(), net.parameters(), strict=True):
        pe.lerp_(p, 1 - d)
    for be, b in zip(ema.buffers(), net.buffers(), strict=True):  # batch-norm statistics
        be.copy_(b)


def adversarial_update(module, d_loss: Tensor, logs: dict[str, Tensor],
                       generator_loss: Callable[[], tuple[Tensor, dict[str, Tensor]]],
                       batch_idx: int, n_images: int) -> dict[str, Tensor]:
    """One manual-optimisation step shared by the GAN families: D's step on `d_loss`, G's step
    every n_critic batches (D's weights get no gradient from G's loss), the EMA of G, the
    corruption schedule (fed D's sign accuracy on real images, averaged over ranks) and logging."""
    opt_d, opt_g = module.optimizers()
    opt_d.zero_grad(set_to_none=True)
    module.manual_backward(d_loss)
    opt_d.step()
    out = {"d_loss": d_loss.detach()}
    if (batch_idx + 1) % module.hparams.n_critic == 0:
        with module.toggled_optimizer(opt_g):
            g_loss, g_logs = generator_loss()
            opt_g.zero_grad(set_to_none=True)
            module.manual_backward(g_loss)
            opt_g.step()
        if module.g_ema is not None:
            ema_update(module.g_ema, module.generator, module.hparams.ema_decay, int(module.ema_updates))
            module.ema_updates += 1
        out["g_loss"] = g_loss.detach()
        logs.update(g_logs)
    acc = module.trainer.strategy.reduce(logs["d_real_acc"], reduce_op="mean")
    module.corruption.update(float(acc))
    module.corruption.step(n_images * module.trainer.world_size)
    module.log_dict({f"train/{k}": v for k, v in out.items()}, prog_bar=True)
    module.log_dict({f"train/{k}": v for k, v in logs.items()})
    module.log("train/corruption_level", module.corruption.current_level)
    return out


def eval_generator(module: nn.Module, batch_idx: int) -> torch.Generator:
    """A CPU generator seeded by batch and rank: the same draws every epoch and on every device,
    different on each DDP shard."""
    return torch.Generator().manual_seed(1_000_003 * module.global_rank + batch_idx)


# --- a cheap sample-quality monitor -------------------------------------------------------------


def moments(features: Tensor) -> list[Tensor]:
    """[count, sum, sum of outer products] of features [N, F] in float64: sums that add across
    batches and DDP ranks exactly."""
    f = features.double()
    return [f.new_tensor(float(len(f))), f.sum(0), f.T @ f]


def frechet_distance(mu1: Tensor, cov1: Tensor, mu2: Tensor, cov2: Tensor) -> float:
    """|mu1 - mu2|^2 + tr(cov1 + cov2 - 2 (cov1 cov2)^(1/2)) between two Gaussians, >= 0.

    tr (cov1 cov2)^(1/2) = tr (cov1^(1/2) cov2 cov1^(1/2))^(1/2), a symmetric matrix whose square
    root comes from its eigenvalues (clamped at 0 against round-off).
    """
    w, v = torch.linalg.eigh(cov1)
    root1 = v @ torch.diag(w.clamp_min(0).sqrt()) @ v.T
    m = root1 @ cov2 @ root1
    tr_root = torch.linalg.eigvalsh((m + m.T) / 2).clamp_min(0).sqrt().sum()
    return float((mu1 - mu2).pow(2).sum() + cov1.trace() + cov2.trace() - 2 * tr_root)


def stat_fd(real: list[Tensor], fake: list[Tensor]) -> float:
    """val/stat_fd: Frechet distance between Gaussians fitted to the per-image statistics of
    genlab.probe (mean, std, gradient and Laplacian energy, 16-bin histogram) of real and generated
    images, each statistic divided by its standard deviation over the real images.

    Unitless, >= 0, lower is better; 0 when the means and covariances agree. It sees what the
    shortcut probe sees (brightness, contrast, sharpness, histogram) and no shapes: a cheap monitor
    for checkpoints and sweeps that needs no feature network, not a substitute for FID.
    `real`, `fake`: moments() sums.
    """
    def gaussian(m):
        n, s1, s2 = m
        mu = s1 / n
        return mu, (s2 - n * torch.outer(mu, mu)) / max(float(n) - 1, 1.0)

    (mu_r, cov_r), (mu_f, cov_f) = gaussian(real), gaussian(fake)
    scale = cov_r.diagonal().clamp_min(0).sqrt().clamp_min(1e-6)
    outer = torch.outer(scale, scale)
    return frechet_distance(mu_r / scale, cov_r / outer, mu_f / scale, cov_f / outer)


# --- DCGAN --------------------------------------------------------------------------------------


class DCGAN(GenerativeModule):
    def __init__(
        self,
        image_shape: tuple[int, int, int],
        corruption: Corruption | Mapping | None = None,
        d_mode: str = "plain",
        loss: str = "ns",
        latent_dim: int = 64,
        base_channels: int = 32,
        lr: float = 2e-4,
        betas: Sequence[float] = (0.5, 0.999),
        n_critic: int = 1,
        gp_weight: float = 10.0,
        wgan_drift: float = 1e-3,
        r1_gamma: float = 0.0,
        ema_decay: float | None = None,
        aux_weight_d: float = 1.0,
        aux_weight_g: float = 0.2,
        n_grid: int = 64,
    ):
        super().__init__()
        self.automatic_optimization = False
        require_choice(d_mode, "model.d_mode", D_MODES)
        check_gan_options(loss, lr, betas, n_critic, gp_weight, wgan_drift, r1_gamma, ema_decay)
        require(loss == "ns" or d_mode != "three_class", "model.loss",
                "ns when model.d_mode=three_class (its 3-way cross-entropy is the non-saturating loss)",
                loss)
        require_positive(latent_dim, "model.latent_dim", integer=True)
        require_positive(base_channels, "model.base_channels", integer=True)
        require_nonnegative(aux_weight_d, "model.aux_weight_d")
        require_nonnegative(aux_weight_g, "model.aux_weight_g")
        require_positive(n_grid, "model.n_grid", integer=True)
        self.corruption = as_corruption(corruption)
        self.save_hyperparameters(ignore=["corruption"])
        self.hparams["corruption"] = self.corruption.config()
        self.image_shape = tuple(image_shape)
        c = self.corruption
        self.level_scale = float(c.level_range[1] if c.level_range else c.level) or 1.0
        self.generator = ConvDecoder(latent_dim, image_shape, base_channels=base_channels, norm=True)
        self.discriminator = ConvEncoder(image_shape, D_OUTPUTS[d_mode], base_channels, activation="lrelu")
        self.g_ema = ema_copy(self.generator, ema_decay)
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))
        self.means = eval_means(["d_real_acc"])
        self._moments: dict[str, list[Tensor]] = {}
        # a fixed latent batch so sample grids of one run are comparable across epochs
        self.register_buffer("fixed_z", torch.randn(n_grid, latent_dim,
                                                    generator=torch.Generator().manual_seed(0)),
                             persistent=False)

    # -- the networks ---------------------------------------------------------------------------
    def z(self, n: int) -> Tensor:
        return torch.randn(n, self.hparams.latent_dim, device=self.device)

    def d_out(self, x: Tensor) -> Tensor:
        """D's raw outputs [B, D_OUTPUTS[d_mode]] for images x in [0, 1]."""
        return self.discriminator(to_signed(x))

    def realness(self, out: Tensor) -> Tensor:
        """s [B], a logit (> 0: judged real); three_class: logit_real - logsumexp(the others)."""
        if self.hparams.d_mode == "three_class":
            return out[:, REAL] - torch.logsumexp(out[:, REAL + 1:], dim=1)
        return out[:, 0]

    def view(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """What D judges in the real/fake game: corruption(x) for instance_noise, else x itself."""
        return self.corruption(x, generator=generator) if self.hparams.d_mode == "instance_noise" else x

    @torch.no_grad()
    def generate(self, n: int, z: Tensor | None = None) -> Tensor:
        """n samples in [0, 1], from the EMA generator when there is one."""
        g = self.g_ema if self.g_ema is not None else self.generator
        return to_image(g(self.z(n) if z is None else z))

    def sample_grids(self, real: Tensor) -> dict[str, Tensor]:
        """With a corruption in D's game, what the corruption does to real images now (a fixed
        draw); the sample-grid callback draws the generated samples itself."""
        n = min(len(real), len(self.fixed_z))
        grids = {}
        if self.hparams.d_mode != "plain" and self.corruption.kind != "none":
            degraded = self.corruption(real[:n], generator=torch.Generator().manual_seed(0))
            grids["degraded_real"] = degraded.clamp(0, 1)
        return grids

    # -- the losses -------------------------------------------------------------------------------
    def level_loss(self, x: Tensor) -> Tensor:
        """Noise head: mean squared error of D's estimate of level / level_scale on x corrupted at
        per-image levels (see the module docstring); unitless."""
        c, n = self.corruption, len(x)
        if c.level_range is not None:
            levels = c.sample_levels(n, device=x.device, dtype=x.dtype)
        else:
            levels = c.current_level * torch.rand(n, device=x.device, dtype=x.dtype)
        prediction = self.d_out(c(x, level=levels))[:, 1]
        return F.mse_loss(prediction, levels / self.level_scale)

    def discriminator_loss(self, real: Tensor, fake: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """D's loss for real and (detached) fake images in [0, 1], and what to log."""
        hp = self.hparams
        real_in = to_signed(self.view(real)).detach().requires_grad_(hp.r1_gamma > 0)
        fake_in = to_signed(self.view(fake)).detach()
        out_real, out_fake = self.discriminator(real_in), self.discriminator(fake_in)
        s_real, s_fake = self.realness(out_real), self.realness(out_fake)
        logs = {"d_real_acc": (s_real > 0).float().mean()}
        if hp.d_mode == "three_class":
            out_degraded = self.d_out(self.corruption(real))
            label = torch.full((len(real),), REAL, device=real.device)
            loss = (F.cross_entropy(out_real, label) + F.cross_entropy(out_fake, label + FAKE)
                    + F.cross_entropy(out_degraded, label + DEGRADED))
            logs["d_degraded_acc"] = (out_degraded.argmax(1) == DEGRADED).float().mean()
        else:
            loss = d_adversarial(s_real, s_fake, hp.loss)
        penalty, penalty_logs = d_penalties(lambda x: self.realness(self.discriminator(x)),
                                            real_in, fake_in, s_real, hp)
        loss = loss + penalty
        logs.update(penalty_logs)
        if hp.d_mode == "noise_head":
            aux = self.level_loss(real)
            loss = loss + hp.aux_weight_d * aux
            logs["aux_d"] = aux.detach()
        return loss, logs

    def generator_loss(self, n: int) -> tuple[Tensor, dict[str, Tensor]]:
        """G's loss on n fresh samples (gradients reach G through D and, for instance_noise and
        noise_head, through the corruption), and what to log."""
        fake = to_image(self.generator(self.z(n)))
        loss = g_adversarial(self.realness(self.d_out(self.view(fake))), self.hparams.loss)
        logs = {}
        if self.hparams.d_mode == "noise_head":
            aux = self.level_loss(fake)
            loss = loss + self.hparams.aux_weight_g * aux
            logs["aux_g"] = aux.detach()
        return loss, logs

    # -- Lightning ----------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        real = batch[0]
        n = real.shape[0]
        with torch.no_grad():
            fake = to_image(self.generator(self.z(n)))
        d_loss, logs = self.discriminator_loss(real, fake)
        return adversarial_update(self, d_loss, logs, lambda: self.generator_loss(n), batch_idx, n)

    def _eval_step(self, stage: str, real: Tensor, batch_idx: int) -> None:
        g = eval_generator(self, batch_idx)
        z = torch.randn(len(real), self.hparams.latent_dim, generator=g).to(self.device)
        fake = self.generate(len(real), z)
        for name, x in (("real", real), ("fake", fake)):
            m = moments(torch.from_numpy(image_statistics(x.float().cpu())))
            self._moments[name] = [a + b for a, b in zip(self._moments.get(name, [0, 0, 0]), m,
                                                         strict=True)]
        s_real = self.realness(self.d_out(self.view(real, generator=g)))
        log_eval(self, stage, {"d_real_acc": (s_real > 0).float()})

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
        self._eval_step("val", batch[0], batch_idx)

    def on_validation_epoch_end(self):
        self._log_stat_fd("val")

    def on_test_epoch_start(self):
        self._moments = {}

    def test_step(self, batch, batch_idx):
        self._eval_step("test", batch[0], batch_idx)

    def on_test_epoch_end(self):
        self._log_stat_fd("test")

    def configure_optimizers(self):
        hp = self.hparams
        betas = tuple(hp.betas)
        return [torch.optim.Adam(self.discriminator.parameters(), lr=hp.lr, betas=betas),
                torch.optim.Adam(self.generator.parameters(), lr=hp.lr, betas=betas)]


# --- restoration GAN ----------------------------------------------------------------------------


def psnr(x: Tensor, target: Tensor) -> Tensor:
    """Peak signal-to-noise ratio per image [B] in dB for images in [0, 1]: 10 log10(1 / MSE);
    higher is better (capped at 100 dB for identical images)."""
    mse = (x - target).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return -10 * torch.log10(mse)


class RestorationGAN(GenerativeModule):
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
    Not a separate d_mode: the generator's input, its metrics (PSNR, not stat_fd) and `generate`
    all differ from the DCGAN's, while the loss pieces above are shared.
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        corruption: Corruption | Mapping | None = None,
        loss: str = "ns",
        base_channels: int = 32,
        lr: float = 2e-4,
        betas: Sequence[float] = (0.5, 0.999),
        consistency_weight: float = 10.0,
        degraded_d: bool = False,
        n_critic: int = 1,
        gp_weight: float = 10.0,
        wgan_drift: float = 1e-3,
        r1_gamma: float = 0.0,
        ema_decay: float | None = None,
        n_fixed: int = 64,
    ):
        super().__init__()
        self.automatic_optimization = False
        check_gan_options(loss, lr, betas, n_critic, gp_weight, wgan_drift, r1_gamma, ema_decay)
        require_positive(base_channels, "model.base_channels", integer=True)
        require_nonnegative(consistency_weight, "model.consistency_weight")
        require(isinstance(degraded_d, bool), "model.degraded_d", "true | false", degraded_d)
        require_positive(n_fixed, "model.n_fixed", integer=True)
        self.corruption = as_corruption(corruption)
        self.save_hyperparameters(ignore=["corruption"])
        self.hparams["corruption"] = self.corruption.config()
        self.image_shape = tuple(image_shape)
        self.generator = UNet(image_shape, base_channels)
        self.discriminator = ConvEncoder(image_shape, 1, base_channels, activation="lrelu")
        self.discriminator_degraded = (ConvEncoder(image_shape, 1, base_channels, activation="lrelu")
                                       if degraded_d else None)
        self.g_ema = ema_copy(self.generator, ema_decay)
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))
        self.register_buffer("fixed_real", torch.zeros(n_fixed, *self.image_shape))
        self.means = eval_means(["psnr", "psnr_input", "l1", "d_real_acc"])

    def on_fit_start(self):
        dm = self.trainer.datamodule
        if dm is not None and hasattr(dm, "images"):
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
    def _d_game(self, d: nn.Module, real: Tensor, fake: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """One discriminator's loss and penalties: real and (detached) fake images in [0, 1]."""
        real_in = to_signed(real).detach().requires_grad_(self.hparams.r1_gamma > 0)
        fake_in = to_signed(fake).detach()
        s_real, s_fake = d(real_in)[:, 0], d(fake_in)[:, 0]
        penalty, logs = d_penalties(lambda x: d(x)[:, 0], real_in, fake_in, s_real, self.hparams)
        logs["d_real_acc"] = (s_real > 0).float().mean()
        return d_adversarial(s_real, s_fake, self.hparams.loss) + penalty, logs

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

    def generator_loss(self, degraded: Tensor, levels: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        restored = to_image(self.generator(to_signed(degraded)))
        adv = g_adversarial(self.discriminator(to_signed(restored))[:, 0], self.hparams.loss)
        redegraded = self.corruption(restored, level=levels)  # same levels, fresh noise
        consistency = (redegraded - degraded).abs().mean()
        loss = adv + self.hparams.consistency_weight * consistency
        logs = {"g_adv": adv.detach(), "consistency": consistency.detach()}
        if self.discriminator_degraded is not None:
            adv2 = g_adversarial(self.discriminator_degraded(to_signed(redegraded))[:, 0],
                                 self.hparams.loss)
            loss = loss + adv2
            logs["g_adv2"] = adv2.detach()
        return loss, logs

    # -- Lightning ----------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        real = batch[0]
        degraded, levels = self.corruption(real, return_levels=True)
        with torch.no_grad():
            restored = to_image(self.generator(to_signed(degraded)))
        d_loss, logs = self.discriminator_loss(real, degraded, levels, restored)
        return adversarial_update(self, d_loss, logs, lambda: self.generator_loss(degraded, levels),
                                  batch_idx, real.shape[0])

    def _eval_step(self, stage: str, real: Tensor, batch_idx: int) -> None:
        degraded = self.corruption(real, generator=eval_generator(self, batch_idx))
        restored = self.restore(degraded)
        s_real = self.discriminator(to_signed(real))[:, 0]
        log_eval(self, stage, {"psnr": psnr(restored, real), "psnr_input": psnr(degraded, real),
                               "l1": (restored - real).abs().flatten(1).mean(1),
                               "d_real_acc": (s_real > 0).float()})

    def validation_step(self, batch, batch_idx):
        self._eval_step("val", batch[0], batch_idx)

    def test_step(self, batch, batch_idx):
        self._eval_step("test", batch[0], batch_idx)

    def configure_optimizers(self):
        hp = self.hparams
        d_params = list(self.discriminator.parameters())
        if self.discriminator_degraded is not None:
            d_params += list(self.discriminator_degraded.parameters())
        betas = tuple(hp.betas)
        return [torch.optim.Adam(d_params, lr=hp.lr, betas=betas),
                torch.optim.Adam(self.generator.parameters(), lr=hp.lr, betas=betas)]

