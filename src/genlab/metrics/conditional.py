"""Class-conditional sample quality: intra-FID and the class accuracy of generated images.

- `intra_fid`: for each class c, the Frechet distance between Gaussians fitted to the features of
  the generated images of class c and of the real images of class c (torch-fidelity's statistics
  and distance, as genlab.metrics.fid), and their mean over the classes (Miyato & Koyama 2018's
  intra-FID). Squared feature units, >= 0 up to round-off, lower is better; like FID, on the scale
  of its extractor and biased upwards by an amount that shrinks as the images per class grow.
- `class_accuracy`: the share of the generated images of class c that a held-out classifier (the
  dataset's extractor CNN, genlab.metrics.extractors, trained on real images only) assigns to c,
  and the mean of these shares over the classes. In [0, 1], higher is better; chance is
  1 / number of classes, and a classifier's own test accuracy on real images is the ceiling a
  perfect generator would reach (0.92 on Fashion-MNIST, 0.98 on digits).
"""

from __future__ import annotations

import numpy as np
from torch import Tensor
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric


def frechet_distance(a: Tensor, b: Tensor) -> float:
    """The Frechet distance between Gaussians fitted to features a [N, D] and b [M, D]:
    |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)), sample covariances (N - 1)."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"a Frechet distance needs at least 2 images on each side, got {len(a)} and {len(b)}")
    stats_a = fid_features_to_statistics(a.double())
    stats_b = fid_features_to_statistics(b.double())
    return float(fid_statistics_to_metric(stats_a, stats_b, False)["frechet_inception_distance"])


def intra_fid(fake: Tensor, fake_labels: Tensor, real: Tensor, real_labels: Tensor,
              classes=None) -> tuple[float, dict[int, float]]:
    """(mean over classes, {class: FID}) of the features of generated images fake [N, D] with
    their classes fake_labels [N] against real [M, D] with real_labels [M]; `classes`: which
    (default: every class among fake_labels)."""
    classes = sorted({int(c) for c in fake_labels.tolist()}) if classes is None else [int(c) for c in classes]
    per_class = {c: frechet_distance(fake[fake_labels == c], real[real_labels == c]) for c in classes}
    return float(np.mean(list(per_class.values()))), per_class


def class_accuracy(logits: Tensor, labels: Tensor, classes=None) -> tuple[float, dict[int, float]]:
    """(mean over classes, {class: accuracy}) of a classifier's logits [N, K] on generated images
    of the requested classes labels [N]: each class's share of its images classified as it."""
    classes = sorted({int(c) for c in labels.tolist()}) if classes is None else [int(c) for c in classes]
    predicted = logits.argmax(1)
    per_class = {}
    for c in classes:
        mine = labels == c
        if not bool(mine.any()):
            raise ValueError(f"no generated images of class {c}")
        per_class[c] = float((predicted[mine] == c).double().mean())
    return float(np.mean(list(per_class.values()))), per_class


__all__ = ["class_accuracy", "frechet_distance", "intra_fid"]
