"""Periodic evaluation: sample quality for every family, latent diagnostics for models with an
encoder, disentanglement scores on data with known factors (dSprites).

When it runs: at the end of validation every `every_n_epochs` epochs of fit (never during the
sanity check; 0 = never during fit), and always when the trainer runs `validate` outside fit, which
is genlab-train's final validation of the best checkpoint. Everything is logged with
`pl_module.log` under `val/...`, so it lands in metrics.csv, W&B and the run's summary, and can be
the checkpoint monitor or a sweep's objective.

Logged (units and signs: genlab.metrics.fid and genlab.metrics.prior):
- always: val/fid, val/kid, val/precision, val/recall, val/is, as chosen by `which`;
- models that declare genlab.capabilities.Encoder, when `latent`: val/active_units, val/mmd_prior,
  val/kl_aggregate and val/fid_expost, the FID of samples decoded from a Gaussian mixture fitted to
  the training codes (Ghosh et al. 2020), to put beside val/fid, the prior's;
- data that declares genlab.capabilities.KnownFactors (dSprites) when `disentanglement`, at the
  final validation only (it costs minutes on a CPU):
  val/mig, val/factor_vae, val/dci_disentanglement, val/dci_completeness,
  val/dci_informativeness (the DCI predictors' test accuracy).

Under DDP every rank generates its share of the samples with its own seed; the shares are gathered
to every rank and every rank computes the same numbers from the same tensor, so the values are
logged without a cross-rank reduction.

Randomness: every draw (generated images, the latent subset, posterior and prior draws, the
mixture fit, disentanglement's factors) is seeded from the run seed and its own phase name
(genlab.seeding.mix_seed), and the whole evaluation runs on a fork of the global generators: what
happened before it (a cache miss, another callback, a resume) changes no value, and training goes
on with exactly the random stream it would have had without an evaluation.

Failures: a metric that cannot be computed (a mixture fit or sqrtm that fails, too few samples,
non-finite features) is logged as NaN, its one-line reason goes to `metric_errors` (which
genlab-train writes into summary.json), and the run goes on.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor

from genlab.capabilities import Encoder, KnownFactors
from genlab.config import ConfigError, require, require_choice, require_positive
from genlab.metrics.disentanglement import dci, factor_vae_score, mig, sample_codes
from genlab.metrics.extractors import DOMAIN, known_extractors, weights_hash
from genlab.metrics.fid import (
    METRIC_SWITCH,
    RealReference,
    gather_samples,
    sample_metrics,
    to_uint8,
)
from genlab.metrics.prior import ExPostGMM, active_units, kl_aggregate_posterior, mmd
from genlab.seeding import generator_for, mix_seed

log = logging.getLogger("genlab")

# The values are identical on every rank by construction (see the module docstring), so the
# cross-rank reduction Lightning recommends would only add a collective.
warnings.filterwarnings("ignore", message=r"It is recommended to use `self.log\('val/")

# sample_metrics' result keys -> logged names
LOGGED = {"fid": "val/fid", "kid": "val/kid", "is": "val/is", "precision": "val/precision",
          "recall": "val/recall"}
LATENT = ("val/active_units", "val/mmd_prior", "val/kl_aggregate", "val/fid_expost")
DISENTANGLEMENT = ("val/mig", "val/factor_vae", "val/dci_disentanglement", "val/dci_completeness",
                   "val/dci_informativeness")
SAMPLES_FILE = "eval_samples.pt"
# what a metric that cannot be computed raises: numpy/scipy/scikit-learn's ValueError and
# LinAlgError (a failed mixture fit, sqrtm or eigvals on non-finite input), torch's RuntimeError,
# torch-fidelity's asserts and ValueError (too few samples). A ConfigError (a ValueError too) is the
# user's, and still stops the run.
METRIC_FAILURES = (ValueError, ArithmeticError, AssertionError, RuntimeError, np.linalg.LinAlgError)


class SampleQuality(pl.Callback):
    """Sample-quality and latent evaluation; its settings come from the `metrics` config group.

    extractor, inception_weights, n_samples, real_split, which, cache_dir, batch_size,
    kid_subset_size, kid_subsets: as in genlab.metrics.fid.sample_metrics (real images: the first
    n_samples of data.<real_split>).
    latent: the VAE extras; latent_subset: codes used for the MMD and the aggregate KL (their costs
    grow as its square); expost_components: Gaussians in the ex-post mixture; expost_reg_covar:
    added to their covariances' diagonals (scikit-learn's reg_covar).
    disentanglement: MIG, FactorVAE and DCI (data with known factors); disentanglement_points: codes for MIG and
    DCI training (DCI tests on half as many, FactorVAE normalises with this many);
    factor_vae_votes: FactorVAE training votes of 64 images each (evaluation: half as many);
    None: disentanglement_points // 5, so that one size (n_samples in the config) scales all.
    save_samples: rank 0 writes the gathered samples scored at the final validation to
    <run>/eval_samples.pt (uint8), so the numbers can be recomputed.
    seed: the run seed; generation on rank r is seeded with mix_seed(seed, "generate", r), the
    same at every evaluation, so epochs are compared on the same noise.
    metric_errors: metric name -> one-line reason, for each metric whose latest value is NaN
    because it could not be computed.
    """

    def __init__(
        self,
        extractor: str,
        inception_weights: str | None = None,
        n_samples: int = 10_000,
        real_split: str = "train",
        every_n_epochs: int = 5,
        which: list[str] = ("fid", "kid", "precision", "recall"),
        cache_dir: str | None = None,
        batch_size: int = 256,
        kid_subset_size: int = 1000,
        kid_subsets: int = 100,
        latent: bool = True,
        latent_subset: int = 2000,
        expost_components: int = 10,
        expost_reg_covar: float = 1e-6,
        disentanglement: bool = False,
        disentanglement_points: int = 10_000,
        factor_vae_votes: int | None = None,
        save_samples: bool = False,
        seed: int = 0,
        generate_batch_size: int = 500,
    ):
        # value checks that need nothing but the config fail at instantiation, before the Trainer
        require_choice(extractor, "metrics.extractor", known_extractors())
        which = list(which)
        require(len(which) > 0, "metrics.which", "a non-empty list", which)
        for m in which:
            require_choice(m, "metrics.which", tuple(METRIC_SWITCH))
        require_positive(n_samples, "metrics.n_samples", integer=True)
        require(n_samples > 1, "metrics.n_samples", "an integer > 1", n_samples)
        require_choice(real_split, "metrics.real_split", ("train", "val", "test"))
        require(isinstance(every_n_epochs, int) and every_n_epochs >= 0, "metrics.every_n_epochs",
                "an integer >= 0 (0: only at the final validation)", every_n_epochs)
        require_positive(kid_subsets, "metrics.kid_subsets", integer=True)
        require_positive(latent_subset, "metrics.latent_subset", integer=True)
        require_positive(expost_components, "metrics.expost_components", integer=True)
        require(isinstance(expost_reg_covar, int | float) and expost_reg_covar >= 0,
                "metrics.expost_reg_covar", "a number >= 0", expost_reg_covar)
        require_positive(disentanglement_points, "metrics.disentanglement_points", integer=True)
        require(factor_vae_votes is None or (isinstance(factor_vae_votes, int) and factor_vae_votes > 0),
                "metrics.factor_vae_votes", "null (disentanglement_points // 5) or a positive integer",
                factor_vae_votes)
        require_positive(generate_batch_size, "callbacks.evaluation.generate_batch_size", integer=True)
        self.extractor, self.inception_weights = extractor, inception_weights
        self.n_samples, self.real_split, self.every_n_epochs = n_samples, real_split, every_n_epochs
        self.which, self.cache_dir = which, cache_dir
        self.batch_size, self.kid_subset_size, self.kid_subsets = batch_size, kid_subset_size, kid_subsets
        self.latent, self.latent_subset, self.expost_components = latent, latent_subset, expost_components
        self.expost_reg_covar = float(expost_reg_covar)
        self.disentanglement = disentanglement
        self.disentanglement_points = disentanglement_points
        self.factor_vae_votes = factor_vae_votes or max(1, disentanglement_points // 5)
        self.save_samples, self.seed = save_samples, seed
        self.generate_batch_size = generate_batch_size
        self._real: RealReference | None = None
        self.metric_errors: dict[str, str] = {}

    # -- checks before training -------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Fail before the first step when the evaluation could not run at its end: missing
        extractor weights (ExtractorUnavailable, saying what to download or retrain), an extractor
        for another image size, disentanglement without known factors."""
        weights_hash(self.extractor, self.inception_weights)  # raises when the weights are not here
        dm = trainer.datamodule
        if dm is None:
            raise ConfigError("callbacks.evaluation needs a genlab data module (trainer.fit(..., "
                              "datamodule=...)); set callbacks.evaluation=null to switch it off")
        if self.extractor in DOMAIN:
            shape = DOMAIN[self.extractor]["image_shape"]
            require(tuple(dm.image_shape) == shape, "metrics.extractor",
                    f"an extractor for this data's images {tuple(dm.image_shape)}; "
                    f"{self.extractor} takes {shape}", self.extractor)
        require(not self.disentanglement or isinstance(dm, KnownFactors), "metrics.disentanglement",
                "false unless the data has known factors (data=dsprites)", self.disentanglement)
        if trainer.state.fn == "fit":
            self._check_monitor(trainer, pl_module)

    def _check_monitor(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """A checkpoint that monitors one of these metrics needs it at every epoch it saves on;
        otherwise Lightning stops the run after the first epoch without it."""
        names = {LOGGED[m] for m in self.which if m in LOGGED}
        names |= {"val/precision", "val/recall"} if "prc" in self.which else set()
        names |= set(LATENT) if self.latent and isinstance(pl_module, Encoder) else set()
        val_every = trainer.check_val_every_n_epoch or 1
        for ckpt in trainer.checkpoint_callbacks:
            monitor, save_every = getattr(ckpt, "monitor", None), getattr(ckpt, "every_n_epochs", 0)
            if monitor in DISENTANGLEMENT:
                raise ConfigError(f"the checkpoint monitors {monitor} (objective.metric), which is "
                                  f"only computed at the final validation; monitor another metric")
            if monitor not in names or not save_every:
                continue
            e = self.every_n_epochs
            require(e >= 1 and (save_every % e == 0 or val_every % e == 0), "metrics.every_n_epochs",
                    f"a divisor of the checkpoint's every_n_epochs ({save_every}), e.g. 1: the "
                    f"checkpoint monitors {monitor} (objective.metric) and needs it at every save", e)

    # -- when ---------------------------------------------------------------------------------------
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        final = trainer.state.fn == "validate"
        if not final:
            if trainer.state.fn != "fit" or not self.every_n_epochs:
                return
            if (trainer.current_epoch + 1) % self.every_n_epochs:
                return
        was_training = pl_module.training
        pl_module.eval()
        try:
            with torch.no_grad(), _forked(pl_module.device):
                self.evaluate(trainer, pl_module, final)
        finally:
            pl_module.train(was_training)

    # -- what ---------------------------------------------------------------------------------------
    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule, final: bool) -> dict:
        start = time.perf_counter()
        rank, world = trainer.global_rank, trainer.world_size
        dm = trainer.datamodule
        if self._real is None:
            self._real = RealReference.from_datamodule(dm, self.real_split, self.n_samples)

        where = "final validation" if final else f"epoch {trainer.current_epoch}"
        per_rank = math.ceil(self.n_samples / world)
        with _seeded(mix_seed(self.seed, "generate", rank), pl_module.device):
            local = self._generate(pl_module, per_rank)
        # uint8 is what the extractors read anyway, and a quarter of the bytes to gather
        fake = gather_samples(to_uint8(local))[: self.n_samples].cpu()
        quality = sorted({k for k in self.which if k in LOGGED}
                         | ({"precision", "recall"} if "prc" in self.which else set()))
        values = self._attempt(where, quality, lambda: self._quality(fake, self.which))
        logged = {LOGGED[k]: v for k, v in values.items() if k in LOGGED}

        if self.save_samples and final and rank == 0:
            path = Path(trainer.default_root_dir) / SAMPLES_FILE
            torch.save({"samples": fake, "extractor": self.extractor, "real_split": self.real_split,
                        "n_real": self._real.n, "metrics": values}, path)

        if self.latent and isinstance(pl_module, Encoder):
            logged.update(self._latent(trainer, pl_module, where))
        if self.disentanglement and final and isinstance(pl_module, Encoder):
            logged.update(self._disentanglement(trainer, pl_module, where))

        for name, value in logged.items():
            pl_module.log(name, float(value), on_step=False, on_epoch=True, sync_dist=False)
        log.info("evaluation (%s, %d samples, %s) took %.1f s: %s", "final" if final else
                 f"epoch {trainer.current_epoch}", self.n_samples, self.extractor,
                 time.perf_counter() - start, ", ".join(f"{k}={v:.4g}" for k, v in logged.items()))
        return logged

    def _attempt(self, where: str, names: list[str], compute: Callable[[], dict]) -> dict:
        """compute() -> {name: value}; when it fails (METRIC_FAILURES), every name gets NaN and the
        reason goes to metric_errors. A value that comes out non-finite is recorded as well."""
        try:
            values = compute()
        except ConfigError:
            raise
        except METRIC_FAILURES as e:
            reason = f"{where}: {_one_line(e)}"
            logged = [LOGGED.get(n, n) for n in names]
            log.warning("%s cannot be computed (%s); logged as NaN", ", ".join(logged), reason)
            self.metric_errors.update(dict.fromkeys(logged, reason))
            return dict.fromkeys(names, math.nan)
        for n, v in values.items():
            if isinstance(v, str):
                continue
            if math.isfinite(v):
                self.metric_errors.pop(LOGGED.get(n, n), None)
            else:
                self.metric_errors[LOGGED.get(n, n)] = f"{where}: the value is {v}"
        return values

    def _quality(self, fake_u8: Tensor, which: list[str]) -> dict:
        return sample_metrics(fake_u8.float() / 255, self._real, self.extractor, which,
                              inception_weights=self.inception_weights, cache_dir=self.cache_dir,
                              batch_size=self.batch_size, kid_subset_size=self.kid_subset_size,
                              kid_subsets=self.kid_subsets, seed=self.seed)

    def _generate(self, pl_module, n: int, z: Tensor | None = None) -> Tensor:
        """n images in [0, 1] from the model (decoded from z when given), in memory-sized batches."""
        b = self.generate_batch_size
        if z is None:
            return torch.cat([pl_module.generate(min(b, n - i)) for i in range(0, n, b)])
        return torch.cat([pl_module.generate(len(zb), z=zb) for zb in z.split(b)])

    def _latent(self, trainer: pl.Trainer, pl_module: Encoder, where: str) -> dict[str, float]:
        """Codes of the first n_samples training images (the data the prior should match)."""
        rank, world = trainer.global_rank, trainer.world_size
        fetch, total = trainer.datamodule.fetcher("train")
        n = min(self.n_samples, total)
        per_rank = math.ceil(n / world)
        # contiguous shards, so the rank-ordered gather restores the images' order
        idx = torch.arange(rank * per_rank, min(n, (rank + 1) * per_rank))
        parts = [pl_module.posterior(fetch(part)[0].float().div(255).to(pl_module.device))
                 for part in idx.split(self.generate_batch_size)]  # an empty shard gives [0, D]
        mu = gather_samples(torch.cat([m for m, _ in parts])).cpu().double()
        std = gather_samples(torch.cat([s for _, s in parts])).cpu().double()

        out = self._attempt(where, ["val/active_units"], lambda: {"val/active_units": active_units(mu)})
        sub = torch.randperm(len(mu), generator=generator_for(self.seed, "latent_subset"))
        sub = sub[: self.latent_subset]

        def prior_mmd():
            g = generator_for(self.seed, "latent_draws")
            # one draw from each point's posterior, in the model's own family (eps=uniform too)
            z_q = pl_module.sample_z(mu[sub], std[sub], generator=g)
            return {"val/mmd_prior": mmd(z_q, torch.randn(z_q.shape, generator=g, dtype=z_q.dtype))}

        out.update(self._attempt(where, ["val/mmd_prior"], prior_mmd))
        # a Gaussian mixture over the subset's posteriors (for eps=uniform: the moment-matched
        # Gaussians); cost latent_subset^2 * D
        out.update(self._attempt(where, ["val/kl_aggregate"], lambda: {
            "val/kl_aggregate": kl_aggregate_posterior(mu[sub], 2 * std[sub].log(), n_samples=self.latent_subset,
                                                       seed=mix_seed(self.seed, "kl_aggregate"))}))

        def fid_expost():
            # every rank fits the same mixture to the same codes and draws the same
            # world * per_rank points, then decodes its own contiguous share
            gmm = ExPostGMM(n_components=min(self.expost_components, len(mu)),
                            seed=mix_seed(self.seed, "expost"), reg_covar=self.expost_reg_covar)
            gmm.fit(mu.float())
            k = math.ceil(self.n_samples / world)
            z = gmm.sample(k * world)[rank * k : (rank + 1) * k]
            local = self._generate(pl_module, len(z), z.to(pl_module.device))
            fake = gather_samples(to_uint8(local))[: self.n_samples].cpu()
            return {"val/fid_expost": self._quality(fake, ["fid"])["fid"]}

        out.update(self._attempt(where, ["val/fid_expost"], fid_expost))
        return out

    def _disentanglement(self, trainer: pl.Trainer, pl_module: Encoder, where: str) -> dict[str, float]:
        """MIG, FactorVAE score and DCI (forest predictors) of the model's codes against the
        data's known factors. Computed on rank 0 and broadcast: these scores are the costly part,
        and the other ranks hold the same weights."""
        data: KnownFactors = trainer.datamodule
        factor_sizes = tuple(data.factor_sizes)
        out: dict = {}
        if trainer.global_rank == 0:
            device = pl_module.device

            def encode(x: Tensor) -> Tensor:
                return pl_module.codes(x.float().div(255).to(device))

            def draw(factors: Tensor) -> Tensor:  # rendered where the model is: no copies
                return data.render(factors.to(device))

            def scores():
                p, seed = self.disentanglement_points, mix_seed(self.seed, "disentanglement")
                codes, factors = sample_codes(encode, factor_sizes, draw, p, seed=seed)
                codes_test, factors_test = sample_codes(encode, factor_sizes, draw, max(2, p // 2),
                                                        seed=mix_seed(self.seed, "disentanglement/test"))
                dci_scores = dci(codes, factors, codes_test, factors_test, model="forest", seed=seed)
                fvae = factor_vae_score(encode, factor_sizes, draw, seed=mix_seed(self.seed, "factor_vae"),
                                        n_train=self.factor_vae_votes,
                                        n_eval=max(1, self.factor_vae_votes // 2), n_variance=p)
                return {"val/mig": mig(codes, factors),
                        "val/factor_vae": fvae["eval_accuracy"],
                        "val/dci_disentanglement": dci_scores["disentanglement"],
                        "val/dci_completeness": dci_scores["completeness"],
                        "val/dci_informativeness": dci_scores["informativeness_test"]}

            # metric_errors on rank 0 only: the rank that writes the summary
            out = self._attempt(where, list(DISENTANGLEMENT), scores)
        return trainer.strategy.broadcast(out, src=0)


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


@contextmanager
def _forked(device: torch.device):
    """Give the global random state back after the block, whatever the block draws (a
    safety net: the draws inside are seeded on their own)."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        yield


@contextmanager
def _seeded(seed: int, device: torch.device):
    """Run a block with the global RNGs seeded, and give the training RNG state back after.
    For generation only: families' generate(n) draw from the global generators and take none
    of their own."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield
