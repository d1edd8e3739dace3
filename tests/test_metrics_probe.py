"""genlab.metrics.probe.linear_probe_accuracy, the linear probes' one fit. Known answers: codes
whose classes are linearly separable are read perfectly; codes drawn independently of the labels
are read at chance; a fit that cannot be made raises ValueError (the evaluator's NaN)."""

import numpy as np
import pytest

from genlab.metrics.probe import linear_probe_accuracy


def separable(n: int, classes: int, dim: int, rng: np.random.Generator):
    """Codes of `classes` classes whose means lie 20 standard deviations apart along separate axes."""
    y = rng.integers(0, classes, n)
    x = rng.normal(size=(n, dim))
    x[np.arange(n), y] += 20.0
    return x, y


@pytest.mark.parametrize("classes", [2, 5])
def test_linearly_separable_codes_are_read_perfectly(classes):
    rng = np.random.default_rng(0)
    x_train, y_train = separable(500, classes, 8, rng)
    x_test, y_test = separable(500, classes, 8, rng)
    assert linear_probe_accuracy(x_train, y_train, x_test, y_test) == 1.0


def test_codes_independent_of_the_labels_are_read_at_chance():
    """Ten balanced classes, 2,000 held-out codes: chance is 0.1 and the standard error of an
    accuracy there about 0.007; the bound leaves room for the fit's own overfitting."""
    rng = np.random.default_rng(0)
    x_train, x_test = rng.normal(size=(2000, 16)), rng.normal(size=(2000, 16))
    y_train, y_test = rng.integers(0, 10, 2000), rng.integers(0, 10, 2000)
    acc = linear_probe_accuracy(x_train, y_train, x_test, y_test)
    assert abs(acc - 0.1) < 0.03, acc


def test_a_fit_that_cannot_be_made_raises_value_error():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 4))
    with pytest.raises(ValueError):
        linear_probe_accuracy(x, np.zeros(20, dtype=int), x, np.zeros(20, dtype=int))  # one class
    with pytest.raises(ValueError):
        linear_probe_accuracy(np.full((20, 4), np.nan), np.arange(20) % 2, x, np.arange(20) % 2)
