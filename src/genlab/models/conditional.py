"""Class-conditional generation: what the conditional VAE (`model.conditional: true`, preset
model=cvae) and the conditional DCGAN (generator conditional_dcgan, discriminator projection;
preset model=cdcgan) share.

Labels are class indices 0 .. num_classes - 1, batch[1] of every training and evaluation batch of a
data module that declares ClassLabels (genlab.capabilities). `num_classes` is the family setting
`model.num_classes`, which conf/model/vae.yaml and dcgan.yaml take from the data
(`${genlab_num_classes:${data.name}}`: null where the data has no class labels); a conditional
model refuses, in one line, data without labels or with another number of classes.

`generate(n)` of a conditional model draws the classes 0, 1, ..., num_classes - 1, 0, 1, ... in
turn (`cycle_labels`), so any n >= num_classes covers every class and a multiple of it covers them
equally; `generate_class(labels)` draws the requested ones (genlab.capabilities.ClassConditional).

The conditional VAE (Sohn et al. 2015) concatenates the one-hot label to its encoder's input (as
num_classes constant image planes, so any `model.net` takes it) and to its decoder's input z:
q(z | x, y) and p(x | z, y), the prior p(z) left as it is. Its networks read the labels from the
model's ClassCondition, set for the span of a step by `given(labels)`: the objectives, bounds and
estimates of genlab.models.vae run unchanged. A network called without labels raises ValueError,
so an evaluation that encodes unlabelled images (the latent diagnostics, the linear probe) logs NaN
with that reason.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genlab.capabilities import ClassLabels
from genlab.config import ConfigError, require

WITH_LABELS = "data=digits | fashion_mnist | mnist"  # the built-in data modules that declare ClassLabels


def num_classes_rule(value, key: str) -> None:
    """The rule of `model.num_classes`."""
    require(value is None or (isinstance(value, int) and not isinstance(value, bool) and value > 1), key,
            "null (data without class labels) or an integer > 1", value)


def cycle_labels(n: int, num_classes: int, device=None) -> Tensor:
    """0, 1, ..., num_classes - 1, 0, 1, ...: [n] (what generate(n) of a conditional model draws)."""
    return torch.arange(n, device=device) % num_classes


def class_grid_labels(num_classes: int, per_class: int | None = None, device=None) -> Tensor:
    """Labels of a class-by-sample grid: each class per_class times (default num_classes, so a
    square grid of side num_classes has one class per row)."""
    return torch.arange(num_classes, device=device).repeat_interleave(per_class or num_classes)


def check_labels(labels: Tensor, num_classes: int, key: str = "class") -> Tensor:
    """Requested labels as a LongTensor, each in 0 .. num_classes - 1, or one ConfigError line."""
    labels = torch.as_tensor(labels)
    require(not labels.is_floating_point() and labels.dim() == 1, key, "a LongTensor [n] of class indices",
            f"{labels.dtype} {tuple(labels.shape)}")
    bad = labels[(labels < 0) | (labels >= num_classes)]
    require(len(bad) == 0, key, f"class indices in 0 .. {num_classes - 1}", int(bad[0]) if len(bad) else None)
    return labels.long()


def require_class_data(datamodule, num_classes: int, key: str) -> None:
    """A conditional model's data must declare ClassLabels with its number of classes."""
    if not isinstance(datamodule, ClassLabels):
        name = getattr(datamodule, "name", type(datamodule).__name__)
        raise ConfigError(f"{key} needs data with class labels; data {name!r} has none; "
                          f"allowed: {WITH_LABELS}")
    require(datamodule.num_classes == num_classes, "model.num_classes",
            f"{datamodule.num_classes}, the classes of the data", num_classes)


class ClassCondition:
    """The labels a conditional VAE's networks read (module docstring): `given(labels)` sets them
    for a span; `one_hot()` gives them to the networks."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self._labels: Tensor | None = None

    @contextmanager
    def given(self, labels: Tensor | None):
        previous, self._labels = self._labels, labels
        try:
            yield
        finally:
            self._labels = previous

    def one_hot(self, batch: int, dtype, device) -> Tensor:
        """The current labels one-hot [batch, num_classes]. A batch k times the labels' (the k
        posterior draws of each image, flattened draw by draw) repeats them k times."""
        y = self._labels
        if y is None:
            raise ValueError("a conditional model encodes and decodes with the images' class labels, "
                             "and none were given here")
        if batch != len(y):
            if len(y) == 0 or batch % len(y):
                raise ValueError(f"{batch} inputs for {len(y)} class labels")
            y = y.repeat(batch // len(y))
        return F.one_hot(y.to(device).long(), self.num_classes).to(dtype)


class LabelledEncoder(nn.Module):
    """An encoder whose input is the image with the one-hot label appended as constant planes."""

    def __init__(self, net: nn.Module, condition: ClassCondition):
        super().__init__()
        self.net, self.condition = net, condition

    def forward(self, x: Tensor) -> Tensor:
        y = self.condition.one_hot(len(x), x.dtype, x.device)
        planes = y[:, :, None, None].expand(-1, -1, *x.shape[2:])
        return self.net(torch.cat([x, planes], dim=1))


class LabelledDecoder(nn.Module):
    """A decoder whose input is z with the one-hot label appended."""

    def __init__(self, net: nn.Module, condition: ClassCondition):
        super().__init__()
        self.net, self.condition = net, condition

    def forward(self, z: Tensor) -> Tensor:
        return self.net(torch.cat([z, self.condition.one_hot(len(z), z.dtype, z.device)], dim=1))


__all__ = ["ClassCondition", "LabelledDecoder", "LabelledEncoder", "check_labels", "class_grid_labels",
           "cycle_labels", "num_classes_rule", "require_class_data"]
