"""Small pieces every model family shares."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric

from genlab.compat import attached_trainer, should_write_step_logs
from genlab.optim import DEFAULTS, adam
from genlab.registry import Registry
from genlab.seeding import ExampleNoise, run_seed
from genlab.settings import Settings

# name -> family class; `model.family` in a config and the family name in a checkpoint choose from it
FAMILIES: Registry[type[GenerativeModule]] = Registry("model family", "model.family")


class GenerativeModule(pl.LightningModule):
    """What every genlab family provides, so callbacks, genlab-sample and the metrics treat all
    families alike: `generate(n)` -> images in [0, 1], and `sample_grids(real)` -> named image
    batches. Checkpoints also record the family's and the dataset's registry names and the data
    module's keyword arguments, so a checkpoint alone is enough for genlab-sample."""

    data_config: dict | None = None  # set by genlab-train: {'name': dataset, **its keyword arguments}
    optim: dict = DEFAULTS  # set by genlab-train: the run's `optim` settings (genlab.optim)
    Settings: type[Settings] = Settings  # the family's settings: its own keys and its component nodes
    registry_name: str = ""  # set by @FAMILIES.register

    # -- composition ------------------------------------------------------------------------------
    def configure(self, image_shape, settings: Mapping) -> Settings:
        """The family's settings checked once (`model.<key>` in errors), and the image shape.
        A family's __init__(image_shape, **settings) calls this first, then builds its components
        from the checked settings and hands them to `save_settings`."""
        self.image_shape = tuple(image_shape)
        return type(self).Settings.from_node(settings, "model", skip=())

    def save_settings(self, settings: Settings, **components) -> None:
        """The hyper-parameters a checkpoint stores: the image shape, every setting, and each
        built component (or corruption) as its full config node (`config()`: name and every
        setting), so genlab.models.load_model rebuilds the same model through the registries."""
        hp = {"image_shape": list(self.image_shape), **dataclasses.asdict(settings)}
        hp.update({name: c.config() for name, c in components.items()})
        self.save_hyperparameters(hp)

    def generate(self, n: int) -> Tensor:
        raise NotImplementedError

    @classmethod
    def reads_corruption_when(cls) -> dict[str, tuple[str, ...]] | None:
        """When a model of this family applies the run's corruption (`model.corruption:
        ${corruption}`): None never, {} always, {name: values} when its hyper-parameter `name`
        is one of `values`. A corruption that the run's model does not apply is refused
        (genlab.models.check_corruption_read)."""
        return None

    def sample_grids(self, real: Tensor) -> dict[str, Tensor]:
        """Extra named grids beside the generated samples, which the sample-grid callback draws
        itself from generate(n) (genlab.callbacks.samples): reconstructions, chains, ..."""
        return {}

    def sample_modes(self, n: int, steps: int, real_fn) -> dict:
        """genlab-sample's family-specific modes: name -> a callable returning images in [0, 1].
        `real_fn(k)` gives k real test images; `steps` is a chain's or an interpolation's length."""
        return {}

    def adam(self, params, **kwargs) -> torch.optim.Adam:
        """torch.optim.Adam over `params` with the run's `optim` settings (genlab.optim.adam)."""
        return adam(params, **self.optim, **kwargs)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # names and plain values only: a reader rebuilds the model and data through genlab's
        # registries, so a checkpoint never names code to import (genlab.models.load_model)
        data = dict(self.data_config or {})
        checkpoint["genlab"] = {"family": FAMILIES.name_of(type(self)), "data": data.pop("name", None),
                                "data_kwargs": data}
        # the random state too, so a run resumed mid-epoch draws the noise it would have drawn
        checkpoint["genlab_rng"] = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available() and self.device.type == "cuda":
            checkpoint["genlab_rng"]["cuda"] = torch.cuda.get_rng_state(self.device)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        rng = checkpoint.get("genlab_rng")
        trainer = attached_trainer(self)
        if rng and trainer is not None and trainer.state.fn == "fit":
            torch.set_rng_state(rng["cpu"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state(rng["cuda"], self.device)


def eval_means(names: list[str], stages=("val", "test")) -> nn.ModuleDict:
    """One MeanMetric per stage and name, keyed 'val_elbo'. Each sums values and counts across
    batches and DDP ranks, so an epoch's mean is exact whatever the shard sizes (the evaluation
    shards hold every image once, unpadded: genlab.data). The sums are float64, so the order in
    which ranks and batches are added moves the mean by far less than 1e-6."""
    return nn.ModuleDict({f"{s}_{n}": MeanMetric().set_dtype(torch.float64)
                          for s in stages for n in names})


def eval_noise(stage: str, index: Tensor) -> ExampleNoise:
    """The noise of validation or test images, given their indices in the split (the third
    element of an evaluation batch): one generator per image, keyed by the run seed, `stage` and
    the index, so an image draws the same noise in every epoch, after a resume, and in whichever
    DDP process and batch it lands (genlab.seeding.ExampleNoise). The training stream never moves."""
    return ExampleNoise(run_seed(), stage, index)


def log_eval(module, stage: str, values: dict[str, Tensor]) -> None:
    """Update and log the per-image values of an evaluation batch as `stage/name` epoch means."""
    for name, v in values.items():
        metric = module.means[f"{stage}_{name}"]
        metric.update(v.detach().float())
        module.log(f"{stage}/{name}", metric, on_step=False, on_epoch=True)


def log_this_step(module: pl.LightningModule) -> bool:
    """Whether a training step's values will be written: Lightning writes step values every
    trainer.log_every_n_steps steps, and each self.log call costs ~2% of a small model's CPU step
    (measured by `make bench`), so the steps in between skip logging altogether. Outside a Trainer
    (a plain loop calling training_step) nothing would be written, so nothing is logged."""
    trainer = attached_trainer(module)
    return trainer is not None and should_write_step_logs(trainer)


def interleave(a: Tensor, b: Tensor) -> Tensor:
    """[a0, b0, a1, b1, ...]: originals next to their reconstructions in one grid."""
    return torch.stack([a, b], dim=1).flatten(0, 1)


def triplets(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """[a0, b0, c0, a1, b1, c1, ...] cut to 3 r^2 triples, so a square grid of side sqrt(len) =
    3 r (genlab's grids) holds r whole triples per row. Fewer than 3 images: every triple."""
    r = math.isqrt(len(a) // 3)
    m = 3 * r * r if r else len(a)
    return torch.stack([a[:m], b[:m], c[:m]], dim=1).flatten(0, 1)
