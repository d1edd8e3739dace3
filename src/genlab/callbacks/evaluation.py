"""Periodic evaluation: one callback that runs the configured evaluators
(genlab.callbacks.evaluators: sample quality, latent diagnostics, disentanglement, saved samples).

Configuration: the `metrics` group (conf/metrics/<data>.yaml), handed whole to
`Evaluation.from_config`. Its settings (every_n_epochs, n_samples, extractor, ...) are the
callback's keyword arguments; every other key is the node of one evaluator, `metrics.<name>`: a
mapping of its keyword arguments (or true: its defaults) switches it on, null or false switches it
off. callbacks.evaluation=null switches the whole evaluation off.

When it runs: at the end of validation every `every_n_epochs` epochs of fit (never during the
sanity check; 0 = never during fit), and always when the trainer runs `validate` outside fit, which
is genlab-train's final validation of the best checkpoint; evaluators marked final_only run only
then. Everything is logged with `pl_module.log` under `val/...`, so it lands in metrics.csv, W&B
and the run's summary, and can be the checkpoint monitor or a sweep's objective.

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

import inspect
import logging
import math
import time
import warnings
from collections.abc import Iterable, Mapping
from functools import partial

import pytorch_lightning as pl
import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from genlab.callbacks import commanded as _commanded  # noqa: F401  (registers commanded_factors)
from genlab.callbacks.evaluators import EVALUATORS, EvalContext, Evaluator
from genlab.config import ConfigError, one_line, require, require_choice, require_positive
from genlab.data import DATASETS, dataset_name
from genlab.metrics.extractors import DOMAIN, extractor_image_shape, known_extractors, weights_hash
from genlab.metrics.fid import RealReference, sample_metrics
from genlab.seeding import forked_rng

log = logging.getLogger("genlab")


class Evaluation(pl.Callback):
    """Runs `evaluators` (genlab.callbacks.evaluators.Evaluator instances, in order) on a schedule.

    every_n_epochs: evaluate after every N epochs of fit (0: only at the final validation).
    n_samples: images generated per evaluation, and real images (the first n_samples of
    data.<real_split>) they are compared with.
    extractor: the feature extractor of every FID-type score; None: the data's default
    (genlab.data.DATASETS). inception_weights, cache_dir, batch_size: as in
    genlab.metrics.fid.sample_metrics.
    generate_batch_size: images generated (or encoded) at once; memory only.
    seed: the run seed; every draw is seeded from it (genlab.callbacks.evaluators).
    fid_extractor: the extractor in use (resolved in setup); genlab-train writes it to the summary.
    metric_errors: metric name -> one-line reason, for each metric whose latest value is NaN
    because it could not be computed.
    """

    def __init__(
        self,
        evaluators: Iterable[Evaluator],
        every_n_epochs: int = 5,
        n_samples: int = 10_000,
        extractor: str | None = None,
        inception_weights: str | None = None,
        real_split: str = "train",
        cache_dir: str | None = None,
        batch_size: int = 256,
        generate_batch_size: int = 500,
        seed: int = 0,
    ):
        # value checks that need nothing but the config fail at instantiation, before the Trainer
        require(extractor is None or extractor in known_extractors(), "metrics.extractor",
                f"null (the data's own) | {' | '.join(known_extractors())}", extractor)
        require_positive(n_samples, "metrics.n_samples", integer=True)
        require(n_samples > 1, "metrics.n_samples", "an integer > 1", n_samples)
        require_choice(real_split, "metrics.real_split", ("train", "val", "test"))
        require(isinstance(every_n_epochs, int) and not isinstance(every_n_epochs, bool)
                and every_n_epochs >= 0, "metrics.every_n_epochs",
                "an integer >= 0 (0: only at the final validation)", every_n_epochs)
        require_positive(batch_size, "metrics.batch_size", integer=True)
        require_positive(generate_batch_size, "metrics.generate_batch_size", integer=True)
        self.evaluators = list(evaluators)
        self.every_n_epochs, self.n_samples, self.real_split = every_n_epochs, n_samples, real_split
        self.extractor, self.inception_weights = extractor, inception_weights
        self.cache_dir, self.batch_size = cache_dir, batch_size
        self.generate_batch_size, self.seed = generate_batch_size, seed
        self.fid_extractor: str | None = extractor
        self.metric_errors: dict[str, str] = {}
        self._real: RealReference | None = None

    @classmethod
    def from_config(cls, metrics: Mapping, seed: int = 0) -> Evaluation:
        """The callback from the `metrics` config node: its settings (this class's keyword
        arguments) and one node per evaluator (module docstring). The evaluator is the class
        registered under the node's name in EVALUATORS, or the one its `_target_` names (a class
        kept outside genlab)."""
        if isinstance(metrics, DictConfig):
            metrics = OmegaConf.to_container(metrics, resolve=True)
        settings = [p for p in _keywords(cls.__init__) if p not in ("evaluators", "seed")]
        kwargs, evaluators = {}, []
        for name, node in metrics.items():
            if name in settings:
                kwargs[name] = node
            elif node is not None and node is not False:
                evaluators.append(_evaluator(name, {} if node is True else node, settings))
        return cls(evaluators, seed=seed, **kwargs)

    # -- checks before training -------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Fail before the first step when the evaluation could not run at its end: missing
        extractor weights (ExtractorUnavailable, saying what to download or retrain), an extractor
        for another image size, an evaluator whose data needs are not met."""
        # The values are identical on every rank by construction (see the module docstring), so
        # the cross-rank reduction Lightning recommends would only add a collective (idempotent:
        # the filter replaces its own copy).
        warnings.filterwarnings("ignore", message=r"It is recommended to use `self.log\('val/")
        dm = trainer.datamodule
        if dm is None:
            raise ConfigError("callbacks.evaluation needs a genlab data module (trainer.fit(..., "
                              "datamodule=...)); set callbacks.evaluation=null to switch it off")
        if self.extractor is None:
            name = dataset_name(dm)
            require(name in DATASETS, "metrics.extractor", f"a feature extractor name (data {name!r} "
                    f"is not in genlab.data.DATASETS, so it has no default): "
                    f"{' | '.join(known_extractors())}", None)
            self.fid_extractor = DATASETS[name].fid_extractor
        weights_hash(self.fid_extractor, self.inception_weights)  # raises when the weights are not here
        if self.fid_extractor in DOMAIN:
            shape = extractor_image_shape(self.fid_extractor)
            require(tuple(dm.image_shape) == shape, "metrics.extractor",
                    f"an extractor for this data's images {tuple(dm.image_shape)}; "
                    f"{self.fid_extractor} takes {shape}", self.fid_extractor)
        for evaluator in self.evaluators:
            evaluator.check(trainer, pl_module)
        if trainer.state.fn == "fit":
            self._check_monitor(trainer, pl_module)

    def _check_monitor(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """A checkpoint that monitors one of these metrics needs it at every epoch it saves on;
        otherwise Lightning stops the run after the first epoch without it."""
        active = [e for e in self.evaluators if e.applies_to(pl_module)]
        names = {m for e in active if not e.final_only for m in e.metrics}
        final_only = {m for e in active if e.final_only for m in e.metrics}
        val_every = trainer.check_val_every_n_epoch or 1
        for ckpt in trainer.checkpoint_callbacks:
            monitor, save_every = getattr(ckpt, "monitor", None), getattr(ckpt, "every_n_epochs", 0)
            if monitor in final_only:
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
            with torch.no_grad(), forked_rng(pl_module.device):
                self.evaluate(trainer, pl_module, final)
        finally:
            pl_module.train(was_training)

    # -- what ---------------------------------------------------------------------------------------
    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule, final: bool) -> dict:
        start = time.perf_counter()
        if self._real is None:
            self._real = RealReference.from_datamodule(trainer.datamodule, self.real_split, self.n_samples)
        ctx = EvalContext(trainer, pl_module, final, self.seed, self.n_samples, self.generate_batch_size,
                          self.fid_extractor, self._real, self.score)
        for evaluator in self.evaluators:
            if (evaluator.final_only and not final) or not evaluator.applies_to(pl_module):
                continue
            values = ctx.attempt(evaluator.metrics, partial(evaluator.evaluate, ctx))
            unknown = set(values) - set(evaluator.metrics)
            if unknown:
                raise TypeError(f"{type(evaluator).__name__}.evaluate returned {sorted(unknown)}, "
                                f"which are not in its metrics {evaluator.metrics}")
            ctx.logged.update(values)

        for name, value in ctx.logged.items():
            if math.isfinite(value):
                self.metric_errors.pop(name, None)
            else:
                self.metric_errors[name] = ctx.reasons.get(name, f"{ctx.where}: the value is {value}")
            pl_module.log(name, float(value), on_step=False, on_epoch=True, sync_dist=False)
        log.info("evaluation (%s, %d samples, %s) took %.1f s: %s", ctx.where, self.n_samples,
                 self.fid_extractor, time.perf_counter() - start,
                 ", ".join(f"{k}={v:.4g}" for k, v in ctx.logged.items()))
        return ctx.logged

    def score(self, fake_u8: Tensor, which: list[str], kid_subset_size: int = 1000,
              kid_subsets: int = 100) -> dict:
        """sample_metrics of generated uint8 images against the real reference (EvalContext.score)."""
        return sample_metrics(fake_u8.float() / 255, self._real, self.fid_extractor, which,
                              inception_weights=self.inception_weights, cache_dir=self.cache_dir,
                              batch_size=self.batch_size, kid_subset_size=kid_subset_size,
                              kid_subsets=kid_subsets, seed=self.seed)


def _evaluator(name: str, node, settings: list[str]) -> Evaluator:
    """The evaluator of node metrics.<name> (on: a mapping of its keyword arguments)."""
    require(isinstance(node, Mapping), f"metrics.{name}",
            "a mapping of its settings, true (its defaults), null or false (off)", node)
    node = dict(node)
    target = node.pop("_target_", None)
    if target is None:
        if name not in EVALUATORS:
            raise ConfigError(f"metrics.{name} is neither a setting nor an evaluator; allowed: "
                              f"{', '.join(settings)}; evaluators: {', '.join(EVALUATORS)} (or a "
                              f"node with _target_: a genlab.callbacks.evaluators.Evaluator class)")
        evaluator = EVALUATORS[name]
    else:
        try:
            evaluator = get_class(target)
        except Exception as e:
            raise ConfigError(f"metrics.{name}._target_={target!r} cannot be imported: {one_line(e)}") from None
        ok = isinstance(evaluator, type) and issubclass(evaluator, Evaluator)
        require(ok and evaluator.registry_name == name, f"metrics.{name}._target_",
                f"an Evaluator subclass whose name is {name!r}", target)
    allowed = _keywords(evaluator.__init__)
    for key in node:
        if key not in allowed:
            raise ConfigError(f"metrics.{name}.{key} is not an option of evaluator {name}; "
                              f"allowed: {', '.join(allowed) or 'none'}")
    return evaluator(**node)


def _keywords(init) -> list[str]:
    """The keyword arguments an __init__ takes (none for object's)."""
    if init is object.__init__:
        return []
    params = list(inspect.signature(init).parameters.values())[1:]
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]

