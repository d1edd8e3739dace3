"""The commanded-factor evaluator (`metrics.commanded_factors`): generate with a commanded value of
a named factor and read it back with a regressor trained on real labelled images, kept apart from
every model's training, so that every family with named units is measured the same way.

    val/<factor>_commanded_err_deg   for each circle factor with a reader for the run's data
                                     (READERS: dSprites' orientation, genlab.metrics.orientation)

For each of `n` images a phase phi is drawn uniformly (seeded from the run seed), the model
generates with the factor's units set to (cos phi, sin phi) (NamedGeneration.generate_named; the
other units drawn as the model draws them), and the reader reads the phase and the shape back; the
error is the angle between the two on the circle times the read shape's period / (2 pi), in
degrees of the image modulo its symmetry (mean over the images; lower is better). A model that
ignores the command scores about a quarter period: 52.5 degrees over dSprites' three shapes
(genlab.metrics.orientation.GUESS_DEG). The reader's own error on real test images is its floor.
Computed on rank 0 and broadcast.
"""

from __future__ import annotations

import math

import pytorch_lightning as pl
import torch

from genlab.callbacks.evaluators import EVALUATORS, EvalContext, Evaluator
from genlab.capabilities import NamedFactors, NamedGeneration
from genlab.config import require
from genlab.data import dataset_name
from genlab.seeding import forked_rng, mix_seed

# (data, factor) -> the module that reads that factor back from an image
READERS = {("dsprites", "orientation"): "genlab.metrics.orientation"}


def commanded_error_deg(generate_named, name: str, reader, n: int, seed: int, batch_size: int = 500) -> float:
    """Mean error in degrees of the phase read back (reader: a genlab.metrics.orientation regressor)
    from n images generated with the factor `name` commanded to uniformly drawn phases."""
    from genlab.metrics import orientation

    phase = 2 * math.pi * torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    codes = torch.stack([phase.cos(), phase.sin()], 1).float()
    errors = []
    for c, p in zip(codes.split(batch_size), phase.split(batch_size), strict=True):
        images = generate_named({name: c}).float().cpu()
        phase_read, period = orientation.read(reader, images)
        errors.append(orientation.error_deg(p.float(), phase_read, period))
    return torch.cat(errors).mean().item()


@EVALUATORS.register("commanded_factors")
class CommandedFactors(Evaluator):
    """val/<factor>_commanded_err_deg (module docstring); n: images per factor."""

    needs = (NamedGeneration,)
    data_needs = (NamedFactors,)
    metrics: tuple[str, ...] = ()

    def __init__(self, n: int = 2000):
        require(isinstance(n, int) and not isinstance(n, bool) and n > 0, f"{self.key}.n",
                "a positive integer", n)
        self.n = n
        self._readers: dict[str, torch.nn.Module] = {}

    def factors(self, model, data) -> list[str]:
        """The model's circle factors that have a reader for this data."""
        return [name for name, kind in model.named_factor_kinds.items()
                if kind == "circle" and (dataset_name(data), name) in READERS]

    def check(self, trainer: pl.Trainer, model: pl.LightningModule) -> None:
        if not self.applies_to(model):
            return
        super().check(trainer, model)
        self.metrics = tuple(f"val/{f}_commanded_err_deg" for f in self.factors(model, trainer.datamodule))
        for f in self.factors(model, trainer.datamodule):  # the weights must be there before training
            self.reader(trainer.datamodule, f)

    def reader(self, data, name: str) -> torch.nn.Module:
        if name not in self._readers:
            module = __import__(READERS[(dataset_name(data), name)], fromlist=["load_regressor"])
            self._readers[name] = module.load_regressor()
        return self._readers[name]

    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        return ctx.attempt_on_rank_zero(self.metrics, lambda: self._scores(ctx))

    def _scores(self, ctx: EvalContext) -> dict[str, float]:
        model, out = ctx.model, {}
        for name in self.factors(model, ctx.data):
            reader = self.reader(ctx.data, name).to(model.device)
            # the phases from one seed, the model's own draws (generate_named) from another
            with forked_rng(model.device, mix_seed(ctx.seed, "commanded/generate", name)):
                out[f"val/{name}_commanded_err_deg"] = commanded_error_deg(
                    model.generate_named, name, reader, self.n, mix_seed(ctx.seed, "commanded", name),
                    ctx.generate_batch_size)
        return out


__all__ = ["READERS", "CommandedFactors", "commanded_error_deg"]
