"""Small pieces every model family shares."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric


def eval_means(names: list[str], stages=("val", "test")) -> nn.ModuleDict:
    """One MeanMetric per stage and name, keyed 'val_elbo'. Each sums values and counts across
    batches and DDP ranks, so an epoch's mean is exact whatever the shard sizes."""
    return nn.ModuleDict({f"{s}_{n}": MeanMetric() for s in stages for n in names})


def log_eval(module, stage: str, values: dict[str, Tensor]) -> None:
    """Update and log the per-image values of an evaluation batch as `stage/name` epoch means."""
    for name, v in values.items():
        metric = module.means[f"{stage}_{name}"]
        metric.update(v.detach().float())
        module.log(f"{stage}/{name}", metric, on_step=False, on_epoch=True)


def interleave(a: Tensor, b: Tensor) -> Tensor:
    """[a0, b0, a1, b1, ...]: originals next to their reconstructions in one grid."""
    return torch.stack([a, b], dim=1).flatten(0, 1)
