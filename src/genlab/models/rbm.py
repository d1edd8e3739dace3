"""Bernoulli-Bernoulli restricted Boltzmann machine, trained with CD-k or persistent CD.

The model (Deep Learning book, ch. 20.2): binary visible v in {0,1}^V (the flattened image) and
hidden h in {0,1}^H,
    E(v, h) = -b.v - c.h - v.W.h,   p(v, h) = exp(-E(v, h)) / Z,
    p(h | v) = prod_j sigmoid((2h - 1) * (c + W^T v))_j   (eq. 20.14), and likewise
    p(v | h) = prod_i sigmoid((2v - 1) * (b + W h))_i,
    F(v) = -log sum_h exp(-E(v, h)) = -b.v - sum_j softplus(c_j + W_j.v),   p(v) = exp(-F(v)) / Z.

Training: the gradient of the negative log-likelihood is dF(v_data)/dtheta - E_model[dF(v)/dtheta].
CD-k estimates the model expectation with v_k, k Gibbs steps (v -> h -> v, binary draws) from
each data image; PCD (`model.objective.persistent=true`, Tieleman 2008) with `n_chains` chains
that continue from where the previous update left them (the objective component `cd`,
RBM_OBJECTIVES, holds them as a buffer in the state_dict, so a resumed run
goes on with the same chains; under DDP, which broadcasts rank 0's buffers before every step,
all ranks start their PCD step from rank 0's chains). The loss is the surrogate
    mean_batch F(v_data) - mean_chains F(v_model),   v_model detached (no gradient through sampling),
whose autograd gradient is exactly that CD/PCD estimate. We use the surrogate rather than manual
optimisation so the RBM shares Lightning's optimizer loop with every family (gradient clipping,
the gradient-noise callback, DDP gradient averaging) and keeps no update rule of its own: the
update is the `model.optimizer` component (genlab.optim.OPTIMIZERS: sgd with momentum 0.5 by
default, or adam), with the RBM's own lr and weight_decay (an L2 penalty on W, b and c). Its
value, train/free_energy_gap = mean F(data) - mean F(negatives), is no likelihood: it is negative
where the data sit lower in free energy than the model's own samples, and 0 in expectation when
the chains sample the data distribution.

Data must be binary (data.binarize=static|dynamic, or a binary source such as dSprites); the
visible biases start at the logits of the training pixel marginals (Hinton 2010, section 8.1), and
those marginals are also the AIS base-rate model.

Metrics, all per image (summed over pixels), in nats where they are log-probabilities:
  - test/loglik = -F(v) - log Z, log Z from annealed importance sampling (Salakhutdinov & Murray
    2008; genlab.metrics.ais): higher is better. AIS's estimate of Z is unbiased, so log Z tends to
    be underestimated and test/loglik overestimated; test/log_z_stderr is the delta-method standard
    error of log Z across the AIS runs (a small value with few betas does not mean no bias).
  - val/pseudo_loglik, test/pseudo_loglik: V * log p(v_i | v_-i) for one seeded random pixel i per
    image, an unbiased estimate of the log pseudo-likelihood; higher is better; the cheap
    signal checkpoints rank by.
  - val/recon_error: squared error between v and the mean-field reconstruction E[v | E[h | v]],
    summed over pixels; lower is better.
  - val/free_energy_gap = mean F(validation images) - mean F(training images) (`gap_images` of
    them): near 0 while the model generalises; growing when it overfits (Hinton 2010, 6.1).
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genlab.capabilities import BinaryImages
from genlab.compat import attached_trainer
from genlab.config import ConfigError, require
from genlab.metrics.ais import ais_log_z, ais_schedule, exact_log_z
from genlab.models.common import (
    FAMILIES,
    GenerativeModule,
    eval_means,
    eval_noise,
    log_eval,
    log_this_step,
)
from genlab.optim import OPTIMIZERS
from genlab.registry import Component, Registry
from genlab.seeding import ExampleNoise, draw, generator_for, run_seed
from genlab.settings import Settings, choice, flag, nonnegative, positive, positive_int, setting

SAMPLE_STARTS = ("random", "persistent")

# the RBM's training objectives (`model.objective`)
RBM_OBJECTIVES: Registry[type[Component]] = Registry("RBM objective", "model.objective")


# --- the objective ---------------------------------------------------------------------------------


@dataclasses.dataclass
class CDSettings(Settings):
    k: int = positive_int(1)  # Gibbs sweeps per update: from the data (CD-k) or the chains (PCD-k)
    persistent: bool = flag(False)  # true: persistent CD (Tieleman 2008)
    n_chains: int = positive_int(100)  # PCD: persistent chains, the negative sample of every update


@RBM_OBJECTIVES.register("cd")
class ContrastiveDivergence(Component, nn.Module):
    """CD-k, or PCD-k with `persistent` (module doc): the surrogate loss mean F(data) - mean
    F(negatives). With `persistent` it holds the `n_chains` chains as a buffer (`chains`, in the
    state_dict), uniform random binary images of `visible` pixels to start (from the global RNG).
    It receives the RBM's Gibbs sampler and free energy as call arguments."""

    Settings = CDSettings

    def __init__(self, settings: CDSettings, visible: int):
        super().__init__(settings)
        if settings.persistent:
            self.register_buffer("chains", (torch.rand(settings.n_chains, visible) < 0.5).float())

    @property
    def persistent(self) -> bool:
        return self.settings.persistent

    def loss(self, v: Tensor, gibbs, free_energy) -> Tensor:
        """The surrogate for a batch v [B, V]; `gibbs(v, steps)` runs Gibbs sweeps without
        gradient, `free_energy(v)` gives F per image."""
        start = self.chains if self.persistent else v
        negatives = gibbs(start, self.settings.k)
        if self.persistent:
            self.chains.copy_(negatives)
        return free_energy(v).mean() - free_energy(negatives).mean()


# --- the model -------------------------------------------------------------------------------------


def _ais_betas(value, key: str) -> None:
    require(isinstance(value, int) and (value == 0 or value >= 6), key,
            "0 (skip test/loglik) or an integer >= 6", value)


def _integer(value, key: str) -> None:
    require(isinstance(value, int), key, "an integer", value)


@dataclasses.dataclass
class RBMSettings(Settings):
    hidden: int = positive_int(500)
    objective: str | dict = "cd"  # RBM_OBJECTIVES: cd (k, persistent, n_chains)
    # genlab.optim.OPTIMIZERS: sgd (momentum) | adam; SGD with momentum 0.5 unless told otherwise
    optimizer: str | dict = setting(factory=lambda: {"name": "sgd", "momentum": 0.5})
    lr: float = positive(0.05)
    weight_decay: float = nonnegative(1e-4)  # L2 on W, b and c, whichever optimizer applies it
    init_std: float = positive(0.01)
    sample_steps: int = positive_int(200)
    sample_start: str = choice("random", SAMPLE_STARTS)
    ais_betas: int = setting(10_000, _ais_betas)
    ais_runs: int = positive_int(100)
    ais_seed: int = setting(0, _integer)
    gap_images: int = positive_int(500)


@FAMILIES.register("rbm")
class RBM(GenerativeModule):
    Settings = RBMSettings

    def __init__(self, image_shape, **settings):
        super().__init__()
        s = self.configure(image_shape, settings)
        self.optimizer = OPTIMIZERS.build(s.optimizer, "model.optimizer")
        V = math.prod(self.image_shape)
        self.W = nn.Parameter(torch.randn(V, s.hidden) * s.init_std)
        self.b = nn.Parameter(torch.zeros(V))
        self.c = nn.Parameter(torch.zeros(s.hidden))
        # training pixel marginals: the visible biases' start and AIS's base-rate model; set at
        # the start of fit and saved, so a checkpoint alone is enough for the test log-likelihood
        self.register_buffer("data_mean", torch.full((V,), 0.5))
        # after W: PCD's chains start from the global RNG, which W's draw has moved
        self.objective = RBM_OBJECTIVES.build(s.objective, "model.objective", visible=V)
        require(s.sample_start == "random" or self.objective.persistent, "model.sample_start",
                "random when model.objective.persistent=false (there are no persistent chains)",
                s.sample_start)
        self.means = eval_means(["pseudo_loglik", "recon_error", "free_energy", "free_energy_gap",
                                 "loglik", "log_z", "log_z_stderr"])
        self._log_z: tuple[float, float] | None = None
        self.save_settings(s, objective=self.objective, optimizer=self.optimizer)

    @property
    def chains(self) -> Tensor:
        """The persistent chains of PCD (model.objective.persistent=true), [n_chains, V]."""
        return self.objective.chains

    # -- the model ----------------------------------------------------------------------------
    def free_energy(self, v: Tensor) -> Tensor:
        """F(v) per image [B] for v [B, V] (or images [B, C, H, W])."""
        v = v.flatten(1)
        return -v @ self.b - F.softplus(v @ self.W + self.c).sum(1)

    def p_h_given_v(self, v: Tensor) -> Tensor:
        """P(h_j = 1 | v) = sigmoid(c + W^T v)_j, [B, H]."""
        return torch.sigmoid(v.flatten(1) @ self.W + self.c)

    def p_v_given_h(self, h: Tensor) -> Tensor:
        """P(v_i = 1 | h) = sigmoid(b + W h)_i, [B, V]."""
        return torch.sigmoid(h @ self.W.T + self.b)

    def log_p_h_given_v(self, h: Tensor, v: Tensor) -> Tensor:
        """log p(h | v) = sum_j log sigmoid((2h - 1) * (c + W^T v))_j (eq. 20.14), [B]."""
        return F.logsigmoid((2 * h - 1) * (v.flatten(1) @ self.W + self.c)).sum(1)

    def log_p_v_given_h(self, v: Tensor, h: Tensor) -> Tensor:
        """log p(v | h) = sum_i log sigmoid((2v - 1) * (b + W h))_i, [B]."""
        return F.logsigmoid((2 * v.flatten(1) - 1) * (h @ self.W.T + self.b)).sum(1)

    @torch.no_grad()
    def gibbs(self, v: Tensor, steps: int, generator: torch.Generator | None = None) -> Tensor:
        """`steps` Gibbs sweeps v -> h ~ p(h|v) -> v ~ p(v|h), binary draws; returns v [B, V]."""
        v = v.flatten(1)
        for _ in range(steps):
            h = torch.bernoulli(self.p_h_given_v(v), generator=generator)
            v = torch.bernoulli(self.p_v_given_h(h), generator=generator)
        return v

    @torch.no_grad()
    def chain(self, v0: Tensor, steps: int, columns: int) -> Tensor:
        """Run `steps` Gibbs sweeps from v0 and keep p(v | h) at `columns` evenly spaced sweeps
        (the last included): [n, columns, C, H, W] in [0, 1]. Images show the probabilities
        p(v | h), not the binary states, as is usual for RBM samples."""
        keep = set(torch.linspace(1, steps, columns).round().long().tolist())
        v, frames = v0.flatten(1), []
        for t in range(1, steps + 1):
            h = torch.bernoulli(self.p_h_given_v(v))
            p = self.p_v_given_h(h)
            if t in keep:
                frames.append(p)
            v = torch.bernoulli(p)
        while len(frames) < columns:  # fewer sweeps than columns: repeat the last frame
            frames.append(frames[-1])
        return torch.stack(frames, 1).view(len(v), columns, *self.image_shape)

    def starts(self, n: int) -> Tensor:
        """n chain starts: uniform random binary images, or copies of the persistent chains."""
        if self.hparams.sample_start == "persistent":
            return self.chains[torch.arange(n, device=self.device) % len(self.chains)].clone()
        return (torch.rand(n, self.W.shape[0], device=self.device) < 0.5).float()

    @torch.no_grad()
    def generate(self, n: int) -> Tensor:
        """n samples in [0, 1]: p(v | h) after `sample_steps` Gibbs sweeps from `starts(n)`."""
        return self.chain(self.starts(n), self.hparams.sample_steps, 1)[:, -1]

    @torch.no_grad()
    def reconstruct(self, v: Tensor) -> Tensor:
        """Mean-field reconstruction E[v | h = E[h | v]], [B, V]."""
        return self.p_v_given_h(self.p_h_given_v(v))

    def pseudo_loglik(self, v: Tensor, generator: torch.Generator | ExampleNoise | None = None) -> Tensor:
        """V log p(v_i | v_-i) for one random pixel i per image: p(v_i | v_-i) =
        sigmoid(F(v with v_i flipped) - F(v)). Unbiased for the log pseudo-likelihood, [B]."""
        v = v.flatten(1)
        pixels = v.shape[1]  # i uniform on the pixels, from a uniform draw (genlab.seeding.draw)
        u = draw((len(v),), generator, device=v.device)
        i = (u * pixels).long().clamp_max(pixels - 1)
        flipped = v.clone()
        rows = torch.arange(len(v), device=v.device)
        flipped[rows, i] = 1 - flipped[rows, i]
        return v.shape[1] * F.logsigmoid(self.free_energy(flipped) - self.free_energy(v))

    def base_bias(self) -> Tensor:
        """Visible biases of the AIS base-rate model: logits of the training pixel marginals,
        clipped to [1e-3, 1 - 1e-3] so pixels that are always off keep a finite bias."""
        return torch.logit(self.data_mean.clamp(1e-3, 1 - 1e-3))

    @torch.no_grad()
    def log_partition(self, betas: int | None = None, runs: int | None = None,
                      seed: int | None = None) -> tuple[float, float]:
        """(log Z, its standard error) by AIS with the configured betas, runs and seed; the
        estimate has its own generator, so it is the same whatever ran before."""
        betas, runs = betas or self.hparams.ais_betas, runs or self.hparams.ais_runs
        seed = self.hparams.ais_seed if seed is None else seed
        g = torch.Generator(device=self.device).manual_seed(seed)
        return ais_log_z(self.W, self.b, self.c, self.base_bias(), ais_schedule(betas), runs, g)

    @torch.no_grad()
    def exact_log_partition(self) -> float:
        """log Z by enumerating the hidden layer (genlab.metrics.ais.exact_log_z); only for
        H <= 20 (2^H terms)."""
        return exact_log_z(self.W, self.b, self.c)

    # -- images for callbacks and genlab-sample ------------------------------------------------
    def filters(self, n: int) -> Tensor:
        """The weights of the first n hidden units as images, each scaled to [0, 1]."""
        w = self.W[:, :n].T.detach()
        lo, hi = w.min(1, keepdim=True).values, w.max(1, keepdim=True).values
        return ((w - lo) / (hi - lo).clamp_min(1e-8)).view(-1, *self.image_shape)

    def sample_modes(self, n: int, steps: int, real_fn) -> dict:
        """genlab-sample modes: `chain` (n chains from `starts`, `steps` columns evenly spaced
        over sample_steps sweeps), `chain_data` (the same from n test images, which fill the first
        column) and `filters` (the first n hidden units' weights)."""
        total = self.hparams.sample_steps

        def from_data():
            x = real_fn(n)
            frames = self.chain(x, total, max(1, steps - 1))
            return torch.cat([x.unsqueeze(1), frames], 1).flatten(0, 1)

        return {"chain": lambda: self.chain(self.starts(n), total, steps).flatten(0, 1),
                "chain_data": from_data, "filters": lambda: self.filters(n)}

    def sample_grids(self, real: Tensor) -> dict[str, Tensor]:
        """Square grids beside the callback's generated images: k chains from `starts` (rows) at
        k sweeps evenly spaced up to sample_steps (columns), k = sqrt(len(real)); mean-field
        reconstructions next to the images; and the first len(real) filters."""
        k = max(1, math.isqrt(len(real)))
        chain = self.chain(self.starts(k), self.hparams.sample_steps, k).flatten(0, 1)
        half = real[: len(real) // 2]
        recon = self.reconstruct(half).view_as(half)
        return {"chain": chain, "reconstruction": torch.stack([half, recon], 1).flatten(0, 1),
                "filters": self.filters(min(len(real), self.W.shape[1]))}

    # -- Lightning ----------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule if attached_trainer(self) is not None else None
        if dm is None:
            return
        if not isinstance(dm, BinaryImages):
            raise ConfigError("model=rbm needs data that declares BinaryImages; "
                              f"{type(dm).__name__} does not")
        if not dm.binary_images:
            raise ConfigError("data.binarize='none' is invalid for model=rbm; allowed: static | "
                              "dynamic (the RBM's visible units are binary)")
        if stage == "fit":
            # a resumed run overwrites both with the checkpoint's values after this hook
            mean = dm.images("train").flatten(1).mean(0).to(self.data_mean)
            self.data_mean.copy_(mean)
            with torch.no_grad():
                self.b.copy_(self.base_bias())

    def training_step(self, batch, batch_idx):
        v = batch[0].flatten(1)
        gap = self.objective.loss(v, self.gibbs, self.free_energy)
        if log_this_step(self):
            self.log("train/free_energy_gap", gap.detach(), prog_bar=True)
            with torch.no_grad():
                err = (v - self.reconstruct(v)).pow(2).sum(1).mean()
            self.log("train/recon_error", err)
        return gap

    def _eval_values(self, stage: str, batch) -> dict[str, Tensor]:
        v, _, index = batch
        v = v.flatten(1)
        # each image's own pixel (eval_noise): the same every epoch and in any DDP process
        g = eval_noise(f"{stage}/pseudo_loglik", index)
        fe = self.free_energy(v)
        return {"pseudo_loglik": self.pseudo_loglik(v, g), "free_energy": fe,
                "recon_error": (v - self.reconstruct(v)).pow(2).sum(1)}

    def on_validation_epoch_start(self):
        n = self.hparams.gap_images
        x = self.trainer.datamodule.images("train", n).to(self.device).flatten(1)
        # dynamically binarised training images are stored grey: one fixed draw of them
        x = torch.bernoulli(x, generator=generator_for(run_seed(), "rbm_gap", device=x.device))
        self._train_free_energy = self.free_energy(x).mean()

    def validation_step(self, batch, batch_idx):
        values = self._eval_values("val", batch)
        values["free_energy_gap"] = values["free_energy"] - self._train_free_energy
        log_eval(self, "val", values)

    def on_test_epoch_start(self):
        self._log_z = self.log_partition() if self.hparams.ais_betas else None

    def test_step(self, batch, batch_idx):
        values = self._eval_values("test", batch)
        if self._log_z is not None:
            log_z, stderr = self._log_z
            values["loglik"] = -values["free_energy"] - log_z
            values["log_z"] = torch.full_like(values["loglik"], log_z)
            values["log_z_stderr"] = torch.full_like(values["loglik"], stderr)
        log_eval(self, "test", values)

    def configure_optimizers(self):
        return self.optimizer.make(self.parameters(), lr=self.hparams.lr,
                                   weight_decay=self.hparams.weight_decay, optim=self.optim)
