"""Evaluators: the parts of genlab's periodic evaluation, one class per family of metrics.

The evaluation callback (genlab.callbacks.evaluation.Evaluation) decides when to evaluate, builds
one `EvalContext` per evaluation and runs every configured evaluator in it. An evaluator is one
subclass of `Evaluator`, configured by its own node `metrics.<name>` (its keyword arguments):

    @EVALUATORS.register(name)
                its config node's name: registers the class, and sets its `registry_name`
    needs       capabilities (genlab.capabilities) the model must declare; a model without one is
                skipped, so one metrics config serves every family (a DCGAN gets no latent
                diagnostics)
    data_needs  capabilities the data module must declare; without one the run stops before
                training, since the user asked for scores this data cannot give
    final_only  computed only at the final validation of the best checkpoint (costly scores)
    metrics     the val/* names it logs (an instance attribute when they depend on its settings);
                if evaluate raises, each is logged as NaN with the reason in metric_errors
    evaluate(ctx) -> {val/name: value}
                runs on every rank (ctx.samples and ctx.generate gather across ranks), under
                torch.no_grad, with the model in eval mode, on a fork of the random state

Built in: sample_quality (FID, KID, precision/recall, IS), latent (active units, MMD to the prior,
aggregate KL, FID of an ex-post mixture), disentanglement (MIG, FactorVAE, DCI), linear_probe
(class accuracy of a logistic regression on the codes), class_conditional (intra-FID and the class
accuracy of a class-conditional model's samples) and save_samples.
Units and signs: genlab.metrics.fid, genlab.metrics.prior, genlab.metrics.disentanglement,
genlab.metrics.conditional.

Randomness: every draw is seeded from the run seed and a phase name of its own
(genlab.seeding.mix_seed), so an evaluator's numbers do not depend on which others ran before it.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor
from torchvision.utils import save_image

from genlab.capabilities import ClassConditional, ClassLabels, Encoder, KnownFactors, Representation
from genlab.config import ConfigError, require, require_choice, require_positive
from genlab.data import DATASETS, dataset_name
from genlab.metrics.conditional import class_accuracy, intra_fid
from genlab.metrics.disentanglement import dci, factor_vae_score, mig, sample_codes
from genlab.metrics.extractors import DOMAIN
from genlab.metrics.fid import (
    METRIC_SWITCH,
    RealReference,
    extract_features,
    gather_samples,
    to_uint8,
)
from genlab.metrics.figures import aggregate_posterior_figure
from genlab.metrics.prior import ExPostGMM, active_units, kl_aggregate_posterior, mmd
from genlab.metrics.probe import linear_probe_accuracy
from genlab.registry import Registry
from genlab.runs import atomic_path, atomic_write_bytes, final_grid
from genlab.seeding import forked_rng, generator_for, mix_seed

log = logging.getLogger("genlab")

# every evaluator by the name of its config node, metrics.<name>
EVALUATORS: Registry[type[Evaluator]] = Registry("evaluator", "metrics")
SAMPLES_FILE = "eval_samples.pt"
# what a metric that cannot be computed raises: numpy/scipy/scikit-learn's ValueError and
# LinAlgError (a failed mixture fit, sqrtm or eigvals on non-finite input), torch's RuntimeError,
# torch-fidelity's asserts and ValueError (too few samples). A ConfigError (a ValueError too) is the
# user's, and still stops the run.
METRIC_FAILURES = (ValueError, ArithmeticError, AssertionError, RuntimeError, np.linalg.LinAlgError)


class EvalContext:
    """One evaluation, shared by the evaluators that run in it.

    trainer, model, data, final (the final validation, else an evaluation during fit), where (for
    messages), rank, world, seed (the run seed), n_samples (metrics.n_samples: the images an
    evaluator generates and compares), extractor and real (the feature extractor and the
    RealReference of every FID-type score), logged (the values of the evaluators that ran before).
    `score(fake_u8, which, **kwargs)` is genlab.metrics.fid.sample_metrics of uint8 images against
    `real` with `extractor`, so every FID of a run is on one scale.
    """

    def __init__(self, trainer: pl.Trainer, model: pl.LightningModule, final: bool, seed: int,
                 n_samples: int, generate_batch_size: int, extractor: str, real: RealReference,
                 score: Callable[..., dict]):
        self.trainer, self.model, self.data, self.final = trainer, model, trainer.datamodule, final
        self.where = "final validation" if final else f"epoch {trainer.current_epoch}"
        self.rank, self.world = trainer.global_rank, trainer.world_size
        self.seed, self.n_samples, self.generate_batch_size = seed, n_samples, generate_batch_size
        self.extractor, self.real, self.score = extractor, real, score
        self.logged: dict[str, float] = {}
        self.reasons: dict[str, str] = {}  # metric -> why it is NaN in this evaluation
        self._samples: Tensor | None = None

    def generate(self, n: int, z: Tensor | None = None) -> Tensor:
        """n images from the model, as uint8 [n, C, H, W] on the CPU, the same on every rank:
        each rank generates its contiguous share (decoded from its share of z, when z [n, D] is
        given) with the seed mix_seed(seed, "generate", rank), the same at every evaluation, and
        the shares are gathered in rank order."""
        per_rank = math.ceil(n / self.world)
        b, m = self.generate_batch_size, self.model
        with forked_rng(m.device, mix_seed(self.seed, "generate", self.rank)):
            if z is None:
                local = torch.cat([m.generate(min(b, per_rank - i)) for i in range(0, per_rank, b)])
            else:
                mine = z[self.rank * per_rank : (self.rank + 1) * per_rank].to(m.device)
                local = torch.cat([m.generate(len(zb), z=zb) for zb in mine.split(b)])
        # uint8 is what the extractors read anyway, and a quarter of the bytes to gather
        return gather_samples(to_uint8(local))[:n].cpu()

    def generate_classes(self, labels: Tensor) -> Tensor:
        """Images of the requested classes labels [n] from a ClassConditional model, as uint8
        [n, C, H, W] on the CPU, the same on every rank (as `generate`: each rank its contiguous
        share, seeded with mix_seed(seed, "generate_class", rank))."""
        per_rank = math.ceil(len(labels) / self.world)
        b, m = self.generate_batch_size, self.model
        mine = labels[self.rank * per_rank : (self.rank + 1) * per_rank]
        with forked_rng(m.device, mix_seed(self.seed, "generate_class", self.rank)):
            local = torch.cat([m.generate_class(yb.to(m.device)) for yb in mine.split(b)]
                              or [m.generate_class(mine.to(m.device))])
        return gather_samples(to_uint8(local))[: len(labels)].cpu()

    def samples(self) -> Tensor:
        """The n_samples prior samples of this evaluation (generated once, shared)."""
        if self._samples is None:
            self._samples = self.generate(self.n_samples)
        return self._samples

    def attempt(self, names, compute: Callable[[], dict]) -> dict:
        """compute() -> {name: value}; when it fails (METRIC_FAILURES), every one of `names` is NaN
        and the one-line reason is kept for metric_errors."""
        try:
            return compute()
        except ConfigError:
            raise
        except METRIC_FAILURES as e:
            reason = f"{self.where}: {_one_line(e)}"
            log.warning("%s cannot be computed (%s); logged as NaN", ", ".join(names), reason)
            self.reasons.update(dict.fromkeys(names, reason))
            return dict.fromkeys(names, math.nan)

    def attempt_on_rank_zero(self, names, compute: Callable[[], dict]) -> dict:
        """`attempt` on rank 0 only, its values broadcast to every rank (for scores that need no
        draws from the other ranks: they hold the same weights)."""
        out = self.attempt(names, compute) if self.rank == 0 else {}
        return self.trainer.strategy.broadcast(out, src=0)


class Evaluator:
    """One family of metrics; see the module docstring. A subclass is registered in EVALUATORS
    under its config node's name (`@EVALUATORS.register(name)`, which sets `registry_name`) and
    implements `evaluate`; `check` runs before training (raise ConfigError for what cannot work)."""

    registry_name: ClassVar[str] = ""
    needs: ClassVar[tuple[type, ...]] = ()
    data_needs: ClassVar[tuple[type, ...]] = ()
    final_only: ClassVar[bool] = False
    metrics: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """The config node, for error messages."""
        return f"metrics.{self.registry_name}"

    def applies_to(self, model: pl.LightningModule) -> bool:
        return all(isinstance(model, need) for need in self.needs)

    def check(self, trainer: pl.Trainer, model: pl.LightningModule) -> None:
        """Before the first step: the data must declare data_needs."""
        dm = trainer.datamodule
        for need in self.data_needs:
            if not isinstance(dm, need):
                # classes declare a capability by listing it among their bases
                having = [f"data={n}" for n, d in DATASETS.items() if need in d.__mro__]
                raise ConfigError(f"{self.key} is on, but data {dataset_name(dm)!r} "
                                  f"does not declare {need.__name__}; allowed: {self.key}=null, or "
                                  f"data that declares it ({' | '.join(having) or 'none built in'})")

    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        raise NotImplementedError


# -- the built-in evaluators ------------------------------------------------------------------------
# sample_metrics' result keys -> logged names
QUALITY = {"fid": "val/fid", "kid": "val/kid", "is": "val/is", "precision": "val/precision",
           "recall": "val/recall"}


@EVALUATORS.register("sample_quality")
class SampleQuality(Evaluator):
    """FID, KID, precision/recall and IS of n_samples prior samples against the first n_samples
    images of data.<real_split> (genlab.metrics.fid.sample_metrics), as chosen by `which`.
    kid_subset_size (capped at the image count) and kid_subsets: KID's random subsets."""

    def __init__(self, which=("fid", "kid", "precision", "recall"), kid_subset_size: int = 1000,
                 kid_subsets: int = 100):
        which = list(which)
        require(len(which) > 0, f"{self.key}.which", "a non-empty list", which)
        for m in which:
            require_choice(m, f"{self.key}.which", tuple(METRIC_SWITCH))
        require_positive(kid_subset_size, f"{self.key}.kid_subset_size", integer=True)
        require_positive(kid_subsets, f"{self.key}.kid_subsets", integer=True)
        self.which, self.kid_subset_size, self.kid_subsets = which, kid_subset_size, kid_subsets
        chosen = set(which) | ({"precision", "recall"} if "prc" in which else set())
        self.metrics = tuple(QUALITY[k] for k in sorted(chosen) if k in QUALITY)

    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        fake = ctx.samples()
        values = ctx.score(fake, self.which, kid_subset_size=self.kid_subset_size,
                           kid_subsets=self.kid_subsets)
        return {QUALITY[k]: v for k, v in values.items() if k in QUALITY}


@EVALUATORS.register("latent")
class LatentDiagnostics(Evaluator):
    """For models with an encoder, over the codes of the first n_samples training images (the
    data the prior should match): val/active_units, val/mmd_prior (one posterior draw per image
    against draws of the model's own prior, Encoder.prior_sample), val/kl_aggregate (against its
    log density, Encoder.prior_log_prob), and val/fid_expost, the FID of samples decoded from a
    Gaussian mixture fitted to the codes (Ghosh et al. 2020), to put beside val/fid, the prior's.
    The final validation also draws the codes of the subset into
    <run>/samples/aggregate_posterior_final.png (aggregate_posterior_figure: the latent plane, or
    with more than two latent units the plane of the means' first two principal directions;
    coloured by class where the data has class labels), and the first GRID_N ex-post samples into
    <run>/samples/expost_final.png, to set beside the prior samples (generated_final.png).
    subset: codes used for the MMD (its cost grows as the square), and the draws the aggregate KL
    scores against the mixture of all n_samples codes' posteriors; kl_max_gap: the widest bracket
    (nats) of the aggregate KL's two estimates at which it is logged (genlab.metrics.prior.
    kl_aggregate_posterior), NaN with the bracket in metric_errors beyond it;
    expost_components: Gaussians in the mixture; expost_reg_covar: added to their covariances'
    diagonals (scikit-learn's reg_covar); expost_codes: the codes the mixture is fitted to, those
    of the first n_samples training images (n_samples) or of every training image (all; the other
    diagnostics stay on the first n_samples). val/fid_recon: the FID of the model's reconstructions
    (Encoder.reconstruct: the decoder means of the posterior means) of the first n_samples training
    images, against the same reference as val/fid: the floor that no sampler decoding through
    this decoder (val/fid, val/fid_expost) can be expected to beat. A class-conditional model
    (ClassConditional) is skipped."""

    needs = (Encoder,)
    metrics = ("val/active_units", "val/mmd_prior", "val/kl_aggregate", "val/fid_expost",
               "val/fid_recon")

    def applies_to(self, model: pl.LightningModule) -> bool:
        # a class-conditional encoder, q(z | x, y), reads each image's label, which these
        # diagnostics of q(z | x) do not hand it: a conditional VAE skips them
        return super().applies_to(model) and not isinstance(model, ClassConditional)

    def __init__(self, subset: int = 2000, expost_components: int = 10, expost_reg_covar: float = 1e-6,
                 kl_max_gap: float = 0.1, expost_codes: str = "n_samples"):
        require_positive(subset, f"{self.key}.subset", integer=True)
        require_choice(expost_codes, f"{self.key}.expost_codes", EXPOST_CODES)
        require_positive(kl_max_gap, f"{self.key}.kl_max_gap")
        require_positive(expost_components, f"{self.key}.expost_components", integer=True)
        require(isinstance(expost_reg_covar, int | float) and not isinstance(expost_reg_covar, bool)
                and expost_reg_covar >= 0, f"{self.key}.expost_reg_covar", "a number >= 0",
                expost_reg_covar)
        self.subset, self.expost_components = subset, expost_components
        self.expost_reg_covar = float(expost_reg_covar)
        self.kl_max_gap = float(kl_max_gap)
        self.expost_codes = expost_codes

    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        model: Encoder = ctx.model
        fetch, total = ctx.data.fetcher("train")
        n = min(ctx.n_samples, total)
        per_rank = math.ceil(n / ctx.world)
        # contiguous shards, so the rank-ordered gather restores the images' order
        idx = torch.arange(ctx.rank * per_rank, min(n, (ctx.rank + 1) * per_rank))
        parts = [model.posterior(fetch(part)[0].float().div(255).to(ctx.model.device))
                 for part in idx.split(ctx.generate_batch_size)]  # an empty shard gives [0, D]
        mu = gather_samples(torch.cat([m for m, _ in parts])).cpu().double()
        std = gather_samples(torch.cat([s for _, s in parts])).cpu().double()

        out = ctx.attempt(["val/active_units"], lambda: {"val/active_units": active_units(mu)})
        sub = torch.randperm(len(mu), generator=generator_for(ctx.seed, "latent_subset"))
        sub = sub[: self.subset]

        def prior_mmd():
            g = generator_for(ctx.seed, "latent_draws")
            # one draw from each point's posterior, in the model's own family (eps=uniform too)
            z_q = model.sample_z(mu[sub], std[sub], generator=g)
            z_p = model.prior_sample(len(z_q), generator=g, dtype=z_q.dtype).to(z_q)  # the model's prior
            return {"val/mmd_prior": mmd(z_q, z_p)}

        out.update(ctx.attempt(["val/mmd_prior"], prior_mmd))

        def log_prior(z: Tensor) -> Tensor:  # the model's prior, scored on its device
            return model.prior_log_prob(z.to(ctx.model.device)).double().cpu()

        # the mixture of every code's posterior (for eps=uniform: the moment-matched Gaussians),
        # scored at `subset` draws; cost subset * n * D. NaN, with the bracket as the reason,
        # where the codes cannot tell the KL (kl_aggregate_bounds)
        out.update(ctx.attempt(["val/kl_aggregate"], lambda: {
            "val/kl_aggregate": kl_aggregate_posterior(
                mu, 2 * std.log(), n_samples=self.subset, seed=mix_seed(ctx.seed, "kl_aggregate"),
                max_gap=self.kl_max_gap, log_prior=log_prior)}))

        def fid_expost():
            # every rank fits the same mixture to the same codes and draws the same points, then
            # decodes its own contiguous share
            gmm = ExPostGMM(n_components=min(self.expost_components, len(mu)),
                            seed=mix_seed(ctx.seed, "expost"), reg_covar=self.expost_reg_covar)
            gmm.fit(self._expost_codes(ctx, mu).float())
            k = math.ceil(ctx.n_samples / ctx.world)
            fake = ctx.generate(ctx.n_samples, gmm.sample(k * ctx.world))
            if ctx.final and ctx.rank == 0:
                write_grid(fake[:GRID_N], final_grid(ctx.trainer.default_root_dir, EXPOST))
            return {"val/fid_expost": ctx.score(fake, ["fid"])["fid"]}

        out.update(ctx.attempt(["val/fid_expost"], fid_expost))

        def fid_recon():
            # the same contiguous shards as the codes: each rank reconstructs its own, gathered in
            # rank order (no draws: the posterior means, decoded to the decoder's means)
            recon = [to_uint8(model.reconstruct(fetch(part)[0].float().div(255).to(ctx.model.device)))
                     for part in idx.split(ctx.generate_batch_size)]
            fake = gather_samples(torch.cat(recon)).cpu()
            return {"val/fid_recon": ctx.score(fake, ["fid"])["fid"]}

        out.update(ctx.attempt(["val/fid_recon"], fid_recon))
        if ctx.final and ctx.rank == 0:
            z_q = model.sample_z(mu[sub], std[sub], generator=generator_for(ctx.seed, "latent_figure"))
            labels = classes = None
            if isinstance(ctx.data, ClassLabels):
                labels = ctx.data.labels("train", n)[sub]
                classes = list(ctx.data.class_names)
            path = final_grid(ctx.trainer.default_root_dir, AGGREGATE_POSTERIOR)
            path.parent.mkdir(parents=True, exist_ok=True)
            figure = aggregate_posterior_figure(mu[sub], z_q, model.posterior_family,
                                                labels, classes)
            with atomic_path(path) as tmp:
                figure.savefig(tmp, format="png", dpi=100)
        return out


    def _expost_codes(self, ctx: EvalContext, mu: Tensor) -> Tensor:
        """The codes the ex-post mixture is fitted to: `mu`, the posterior means of the first
        n_samples training images, and with expost_codes=all those of the remaining training
        images too, each rank encoding its contiguous share (gathered in rank order). [N, D]
        float64 on the CPU."""
        fetch, total = ctx.data.fetcher("train")
        if self.expost_codes == "n_samples" or len(mu) >= total:
            return mu
        rest = total - len(mu)
        per_rank = math.ceil(rest / ctx.world)
        idx = torch.arange(len(mu) + ctx.rank * per_rank, len(mu) + min(rest, (ctx.rank + 1) * per_rank))
        parts = [ctx.model.posterior(fetch(part)[0].float().div(255).to(ctx.model.device))[0]
                 for part in idx.split(ctx.generate_batch_size)]  # an empty shard gives [0, D]
        return torch.cat([mu, gather_samples(torch.cat(parts)).cpu().double()])


EXPOST_CODES = ("n_samples", "all")  # metrics.latent.expost_codes
AGGREGATE_POSTERIOR = "aggregate_posterior"  # written as the run's final grid of this name
EXPOST = "expost"  # the ex-post mixture's samples, written as the run's final grid of this name
GRID_N = 64  # images in the ex-post grid, as many as the sample grids' default


def write_grid(images: Tensor, path: Path) -> None:
    """uint8 images [n, C, H, W] as one grid, laid out as SampleGrids lays out its grids."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(images.float().div(255), path, nrow=max(1, int(len(images) ** 0.5)), padding=2)


@EVALUATORS.register("disentanglement")
class Disentanglement(Evaluator):
    """MIG, FactorVAE score and DCI (forest predictors) of the model's codes against the data's
    known factors, at the final validation only (minutes on a CPU). points: codes for MIG and DCI
    training (DCI tests on half as many, FactorVAE normalises with this many; null: n_samples);
    factor_vae_votes: FactorVAE training votes of 64 images each (evaluation: half as many; null:
    points // 5). Computed on rank 0 and broadcast: the other ranks hold the same weights."""

    needs = (Encoder,)
    data_needs = (KnownFactors,)
    final_only = True
    metrics = ("val/mig", "val/factor_vae", "val/dci_disentanglement", "val/dci_completeness",
               "val/dci_informativeness")

    def __init__(self, points: int | None = None, factor_vae_votes: int | None = None):
        require(points is None or (isinstance(points, int) and not isinstance(points, bool) and points > 0),
                f"{self.key}.points", "null (metrics.n_samples) or a positive integer", points)
        require(factor_vae_votes is None or (isinstance(factor_vae_votes, int) and factor_vae_votes > 0),
                f"{self.key}.factor_vae_votes", "null (points // 5) or a positive integer",
                factor_vae_votes)
        self.points, self.factor_vae_votes = points, factor_vae_votes

    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        return ctx.attempt_on_rank_zero(self.metrics, lambda: self._scores(ctx))

    def _scores(self, ctx: EvalContext) -> dict[str, float]:
        data: KnownFactors = ctx.data
        model: Encoder = ctx.model
        device, factor_sizes = ctx.model.device, tuple(data.factor_sizes)
        p = self.points or ctx.n_samples
        votes = self.factor_vae_votes or max(1, p // 5)

        def encode(x: Tensor) -> Tensor:
            return model.codes(x.float().div(255).to(device))

        def draw(factors: Tensor) -> Tensor:  # rendered where the model is: no copies
            return data.render(factors.to(device))

        seed = mix_seed(ctx.seed, "disentanglement")
        codes, factors = sample_codes(encode, factor_sizes, draw, p, seed=seed)
        codes_test, factors_test = sample_codes(encode, factor_sizes, draw, max(2, p // 2),
                                                seed=mix_seed(ctx.seed, "disentanglement/test"))
        dci_scores = dci(codes, factors, codes_test, factors_test, model="forest", seed=seed)
        fvae = factor_vae_score(encode, factor_sizes, draw, seed=mix_seed(ctx.seed, "factor_vae"),
                                n_train=votes, n_eval=max(1, votes // 2), n_variance=p)
        return {"val/mig": mig(codes, factors),
                "val/factor_vae": fvae["eval_accuracy"],
                "val/dci_disentanglement": dci_scores["disentanglement"],
                "val/dci_completeness": dci_scores["completeness"],
                "val/dci_informativeness": dci_scores["informativeness_test"]}


@EVALUATORS.register("linear_probe")
class LinearProbe(Evaluator):
    """val/probe_acc: how linearly readable the data's classes are from the model's codes. A
    multinomial logistic regression (genlab.metrics.probe.linear_probe_accuracy: standardised
    codes, L2 penalty of inverse strength c) is fitted on the codes of the first train_images training images with their class
    labels and scored on the codes of the first test_images images of `split` (val or test):
    held-out accuracy in [0, 1], higher is better; chance is the share of the most frequent class,
    about 1 / num_classes (0.1 on digits and Fashion-MNIST). The codes are the model's
    Representation (the VAE's posterior mean, the DAE's bottleneck) of the clean images; nothing is
    drawn and lbfgs is deterministic, so the score moves only with the weights. Computed on rank 0
    and broadcast. Needs data with class labels (ClassLabels; dSprites has none); skips a
    class-conditional model (ClassConditional), whose codes are given the class."""

    needs = (Representation,)
    data_needs = (ClassLabels,)
    metrics = ("val/probe_acc",)

    def applies_to(self, model: pl.LightningModule) -> bool:
        # a class-conditional model's codes are given the class: nothing to probe for
        return super().applies_to(model) and not isinstance(model, ClassConditional)

    def __init__(self, train_images: int = 5000, test_images: int = 5000, split: str = "val",
                 c: float = 1.0, max_iter: int = 1000):
        require_positive(train_images, f"{self.key}.train_images", integer=True)
        require_positive(test_images, f"{self.key}.test_images", integer=True)
        require_choice(split, f"{self.key}.split", ("val", "test"))
        require_positive(c, f"{self.key}.c")
        require_positive(max_iter, f"{self.key}.max_iter", integer=True)
        self.train_images, self.test_images, self.split = train_images, test_images, split
        self.c, self.max_iter = float(c), max_iter

    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        return ctx.attempt_on_rank_zero(self.metrics, lambda: self._score(ctx))

    def _score(self, ctx: EvalContext) -> dict[str, float]:
        data: ClassLabels = ctx.data
        model: Representation = ctx.model

        def codes(split: str, n: int) -> np.ndarray:
            x = ctx.data.images(split, n)
            parts = [model.codes(xb.to(ctx.model.device)).float().cpu()
                     for xb in x.split(ctx.generate_batch_size)]
            return torch.cat(parts).double().numpy()

        x_train, y_train = codes("train", self.train_images), data.labels("train", self.train_images)
        x_test, y_test = codes(self.split, self.test_images), data.labels(self.split, self.test_images)
        # ValueError on non-finite codes or a single class
        acc = linear_probe_accuracy(x_train, y_train.numpy(), x_test, y_test.numpy(), c=self.c,
                                    max_iter=self.max_iter)
        return {"val/probe_acc": acc}


@EVALUATORS.register("class_conditional")
class ClassConditionalQuality(Evaluator):
    """For class-conditional models (ClassConditional), per_class generated images of each of
    `classes` (null: every class of the data) against the real reference (the first n_samples
    images of data.<real_split>, grouped by their labels), with the run's feature extractor:

    val/intra_fid   the mean over the classes of the FID between the generated and the real images
                    of each class (genlab.metrics.conditional.intra_fid; lower is better)
    val/class_acc   the mean over the classes of the share of each class's generated images that the
                    dataset's extractor CNN, a classifier trained on real images only, assigns to
                    that class (chance 1 / classes; higher is better). NaN, with the reason, under
                    an extractor that is not the data's own classifier (inception-v3-compat).

    per_class: null gives n_samples // classes. Needs data with class labels (ClassLabels)."""

    needs = (ClassConditional,)
    data_needs = (ClassLabels,)
    metrics = ("val/intra_fid", "val/class_acc")

    def __init__(self, per_class: int | None = None, classes: list[int] | None = None):
        require(per_class is None or (isinstance(per_class, int) and not isinstance(per_class, bool)
                                      and per_class > 1), f"{self.key}.per_class",
                "null (n_samples // classes) or an integer > 1", per_class)
        ok = classes is None or (isinstance(classes, list | tuple) and len(classes) > 0 and all(
            isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in classes))
        require(ok, f"{self.key}.classes", "null (every class) or a non-empty list of class indices",
                classes)
        self.per_class, self.classes = per_class, None if classes is None else sorted(set(classes))
        self._real: tuple[tuple, Tensor, Tensor] | None = None

    def check(self, trainer: pl.Trainer, model: pl.LightningModule) -> None:
        # on by default in every labelled data's metrics; only a conditional model needs the labels
        if not self.applies_to(model):
            return
        super().check(trainer, model)
        n = trainer.datamodule.num_classes
        require(self.classes is None or max(self.classes) < n, f"{self.key}.classes",
                f"class indices in 0 .. {n - 1}", self.classes)

    def _real_features(self, ctx: EvalContext) -> tuple[Tensor, Tensor]:
        data: ClassLabels = ctx.data
        key = (ctx.real.split, ctx.real.n, ctx.real.fingerprint, ctx.extractor)
        if self._real is None or self._real[0] != key:
            x = ctx.data.images(ctx.real.split, ctx.real.n)
            feats = extract_features(x, ctx.extractor, batch_size=ctx.generate_batch_size)
            self._real = (key, feats, data.labels(ctx.real.split, ctx.real.n))
        return self._real[1], self._real[2]

    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        data: ClassLabels = ctx.data
        classes = self.classes if self.classes is not None else list(range(data.num_classes))
        per_class = self.per_class or max(2, ctx.n_samples // data.num_classes)
        labels = torch.tensor(classes).repeat_interleave(per_class)
        fake = ctx.generate_classes(labels).float().div(255)

        def fid():
            real, real_labels = self._real_features(ctx)
            fake_f = extract_features(fake, ctx.extractor, batch_size=ctx.generate_batch_size)
            return {"val/intra_fid": intra_fid(fake_f, labels, real, real_labels, classes)[0]}

        def accuracy():
            spec = DOMAIN.get(ctx.extractor)
            if spec is None or spec["data"] != dataset_name(ctx.data) or spec["label_columns"] is not None:
                raise ValueError(f"val/class_acc needs the data's own classifier as metrics.extractor, "
                                 f"not {ctx.extractor}")
            logits = extract_features(fake, ctx.extractor, layer="logits", batch_size=ctx.generate_batch_size)
            return {"val/class_acc": class_accuracy(logits, labels, classes)[0]}

        return {**ctx.attempt(["val/intra_fid"], fid), **ctx.attempt(["val/class_acc"], accuracy)}


@EVALUATORS.register("save_samples")
class SaveSamples(Evaluator):
    """At the final validation, rank 0 writes the prior samples that sample_quality scored to
    <run>/eval_samples.pt (uint8), with the values logged by the evaluators before it, so the
    numbers can be recomputed."""

    final_only = True

    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        fake = ctx.samples()  # on every rank: generating them gathers across ranks
        if ctx.rank == 0:
            path = Path(ctx.trainer.default_root_dir) / SAMPLES_FILE
            data = io.BytesIO()  # torch.save to a file would hide a full disk in a RuntimeError
            torch.save({"samples": fake, "extractor": ctx.extractor, "real_split": ctx.real.split,
                        "n_real": ctx.real.n, "metrics": dict(ctx.logged)}, data)
            atomic_write_bytes(path, data.getbuffer())
        return {}


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]

