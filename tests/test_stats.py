"""genlab.stats against answers known by hand and against scipy's own Welch test."""

import math

import pytest
from scipy.stats import ttest_ind

from genlab.stats import compare, paired_wins, welch


def test_welch_by_hand():
    # a = 4, 5, 6 and b = 1, 2, 3: diff 3, both variances 1, se = sqrt(1/3 + 1/3), and
    # df = (2/3)^2 / ((1/3)^2 / 2 + (1/3)^2 / 2) = 4
    diff, low, high, p, df = welch([4.0, 5.0, 6.0], [1.0, 2.0, 3.0])
    se = math.sqrt(2 / 3)
    assert diff == 3 and df == pytest.approx(4)
    # t(0.975; 4) = 2.776 in every table
    assert (high - diff) / se == pytest.approx(2.776, abs=5e-4)
    assert diff - low == pytest.approx(high - diff)
    # the t distribution with 4 degrees of freedom in closed form:
    # F(t) = 1/2 + 3/8 * u * (1 - t^2 / (12 (1 + t^2/4))), u = t / sqrt(1 + t^2/4)
    t = diff / se
    u = t / math.sqrt(1 + t * t / 4)
    assert p == pytest.approx(2 * (1 - (0.5 + 3 / 8 * u * (1 - t * t / (12 * (1 + t * t / 4))))), rel=1e-9)
    assert p == pytest.approx(0.02131, abs=1e-5)


@pytest.mark.parametrize(("a", "b"), [
    ([274.4, 247.0, 294.0, 282.0], [306.0, 327.0, 306.0]),   # unequal sizes
    ([0.8373, 0.8391, 0.8356], [0.8345, 0.8310, 0.8381]),    # overlapping seeds
    ([-241.9, -241.5, -242.2, -241.6, -242.0], [-243.1, -243.5, -242.8]),
    ([1.0, 2.0], [10.0, 30.0, 20.0, 25.0]),                  # very unequal variances
])
def test_welch_matches_scipy(a, b):
    diff, low, high, p, df = welch(a, b)
    ref = ttest_ind(a, b, equal_var=False)
    assert p == pytest.approx(ref.pvalue, rel=1e-9)
    assert df == pytest.approx(ref.df, rel=1e-9)
    ci = ref.confidence_interval(0.95)
    assert (low, high) == (pytest.approx(ci.low, rel=1e-9), pytest.approx(ci.high, rel=1e-9))
    assert diff == pytest.approx(sum(a) / len(a) - sum(b) / len(b))


def test_welch_undefined_cases_give_the_difference_alone():
    assert welch([5.0], [1.0, 2.0, 3.0]) == (3.0, None, None, None, None)  # one value: no variance
    assert welch([1.0, 1.0], [0.0, 0.0]) == (1.0, None, None, None, None)  # no spread on either
    with pytest.raises(ValueError, match="at least one value on each side"):
        welch([], [1.0])


def test_paired_wins_pair_only_seeds_run_once_on_both_sides():
    a = [(0, 3.0), (1, 1.0), (2, 5.0), (3, 2.0), (4, 9.0), (4, 8.0), (7, 1.0)]
    b = [(0, 2.0), (1, 2.0), (2, 5.0), (3, 1.0), (4, 0.0), (5, 0.0)]
    # seeds 0, 1, 2, 3 pair; 4 ran twice in a, 5 and 7 are on one side only
    assert paired_wins(a, b) == (2, 1, 4)
    c = compare(a, b)
    assert (c.higher, c.lower, c.paired) == (2, 1, 4)
    assert c.diff == pytest.approx(29 / 7 - 10 / 6)
