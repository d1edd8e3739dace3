"""Linear probes: how much a logistic regression reads from features.

`linear_probe_accuracy` is the one fit: a multinomial logistic regression (scikit-learn, lbfgs,
L2 penalty of inverse strength c) on standardised features, scored by held-out accuracy in [0, 1]
(higher is better; chance is the share of the most frequent class). lbfgs is deterministic, so the
score moves only with the features. Two probes use it:
  - metrics.linear_probe (genlab.callbacks.evaluators.LinearProbe): a model's codes against the
    data's class labels (val/probe_acc);
  - the shortcut probe (`probe_accuracy`, genlab-probe): cheap image statistics telling two sets
    of images apart (0.5 = chance on balanced sets).
"""

from __future__ import annotations

import numpy as np
from torch import Tensor

from genlab.metrics.image_stats import image_statistics


def linear_probe_accuracy(x_train, y_train, x_test, y_test, c: float = 1.0,
                          max_iter: int = 1000) -> float:
    """Accuracy on (x_test [n, D], y_test [n]) of a logistic regression fitted on (x_train [m, D],
    y_train [m]) after standardising each feature with the training split's mean and spread.
    Raises ValueError on non-finite features or a single training class."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter))
    clf.fit(x_train, y_train)
    return float(clf.score(x_test, y_test))


def probe_accuracy(a: Tensor | np.ndarray, b: Tensor | np.ndarray, seed: int = 0,
                   test_fraction: float = 0.3) -> float:
    """Held-out accuracy of a logistic regression telling images `a` (class 0) from `b` (class 1)
    by their image statistics (genlab.metrics.image_stats.image_statistics).

    Statistics are standardised on the training split; the split is stratified and seeded, so the
    result is deterministic. With balanced sets, 0.5 is chance. Its binomial standard error is
    about sqrt(0.25 / n_test): 0.03 for 300 held-out images.
    """
    from sklearn.model_selection import train_test_split

    features = np.concatenate([image_statistics(a), image_statistics(b)])
    labels = np.concatenate([np.zeros(len(a), dtype=int), np.ones(len(b), dtype=int)])
    f_train, f_test, y_train, y_test = train_test_split(
        features, labels, test_size=test_fraction, random_state=seed, stratify=labels)
    return linear_probe_accuracy(f_train, y_train, f_test, y_test, max_iter=2000)
