"""How one configuration differs from another over seeds: Welch's t interval and test, and the
seeds where it is higher or lower; and genlab-report's --baseline columns built from them.

    compare([(seed, value), ...], [(seed, value), ...]) -> Comparison

The difference is mean(a) - mean(b). Its 95% interval and two-sided p-value are Welch's: the
t statistic diff / se with se^2 = s_a^2 / n_a + s_b^2 / n_b (sample variances, n - 1), on the
Welch-Satterthwaite degrees of freedom se^4 / ((s_a^2/n_a)^2 / (n_a-1) + (s_b^2/n_b)^2 / (n_b-1)),
which do not assume equal variances (scipy.stats.ttest_ind(a, b, equal_var=False) gives the same
t and p). With fewer than two values on a side, or no spread on either (se = 0), the interval and
p-value are undefined and left out (None); the difference is still given.

Seeds pair up when a seed has exactly one value in each configuration (the same seed, so the
same initialisation and data order): `higher` and `lower` count the pairs where a is above or
below b, `paired` how many pairs there are; ties are the rest. Which way is better depends on the
metric (ELBO up, FID down); the counts say only which way each seed went.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from scipy.stats import t as student_t

LEVEL = 0.95  # the confidence level of every interval

Values = Sequence[tuple[Hashable, float]]  # (seed, value) per run


@dataclass(frozen=True)
class Comparison:
    diff: float            # mean(a) - mean(b)
    low: float | None      # the 95% interval of the difference (Welch), None where undefined
    high: float | None
    p: float | None        # two-sided p-value of Welch's t-test, None where undefined
    df: float | None       # Welch-Satterthwaite degrees of freedom
    higher: int            # paired seeds where a > b
    lower: int             # paired seeds where a < b
    paired: int            # seeds with exactly one value on each side


def welch(a: Sequence[float], b: Sequence[float], level: float = LEVEL
          ) -> tuple[float, float | None, float | None, float | None, float | None]:
    """(diff, low, high, p, df) for mean(a) - mean(b); see the module docstring."""
    if not a or not b:
        raise ValueError("welch needs at least one value on each side")
    diff = statistics.fmean(a) - statistics.fmean(b)
    if len(a) < 2 or len(b) < 2:
        return diff, None, None, None, None
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return diff, None, None, None, None
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = float(student_t.ppf(0.5 + level / 2, df)) * se
    p = 2 * float(student_t.sf(abs(diff) / se, df))
    return diff, diff - half, diff + half, p, df


def paired_wins(a: Values, b: Values) -> tuple[int, int, int]:
    """(higher, lower, paired) over the seeds with exactly one value on each side."""
    ours, theirs = _once(a), _once(b)
    pairs = [(ours[s], theirs[s]) for s in ours if s in theirs]
    return sum(x > y for x, y in pairs), sum(x < y for x, y in pairs), len(pairs)


def _once(values: Values) -> dict[Hashable, float]:
    """seed -> value for the seeds that ran once (a repeated seed pairs with nothing)."""
    counts = Counter(seed for seed, _ in values)
    return {seed: v for seed, v in values if counts[seed] == 1}


def compare(a: Values, b: Values, level: float = LEVEL) -> Comparison:
    """Configuration a against the baseline b, each a list of (seed, value) of its ok runs."""
    diff, low, high, p, df = welch([v for _, v in a], [v for _, v in b], level)
    return Comparison(diff, low, high, p, df, *paired_wins(a, b))


# --- genlab-report --baseline: rows are dicts, a run's as in runs.csv, a configuration's as in
# summary.csv (genlab.report)

def ok_values(members: list[dict[str, Any]], col: str) -> list[tuple[Any, float]]:
    """(seed, value) of the ok runs that have the metric. A NaN (a metric the run could not
    measure: its reason is in the run's metric_errors, its value in runs.csv) is no value."""
    return [(m["seed"], m[col]) for m in members if m["status"] == "ok" and m.get(col) is not None
            and not (isinstance(m[col], float) and math.isnan(m[col]))]


COMPARISON = ("diff", "diff low", "diff high", "p", "higher", "lower", "paired")  # summary.csv


def find_baseline(rows: list[dict[str, Any]], keys: list[str], pairs: list[str]) -> dict[str, Any]:
    """The one row that --baseline's KEY=VALUE pairs pick; ValueError (one line) otherwise. A
    value matches as text or as the same number (model.objective.beta=1 picks the row of 1.0)."""
    def same(have: Any, want: str) -> bool:
        if str(have) == want:
            return True
        try:
            return float(have) == float(want)
        except (TypeError, ValueError):
            return False

    wanted = []
    for pair in pairs:
        key, sep, value = str(pair).partition("=")
        if not sep or not key:
            raise ValueError(f"--baseline {pair!r}: expected KEY=VALUE, e.g. "
                             f"{keys[0] if keys else 'model.objective.beta'}=1")
        if key not in keys:
            raise ValueError(f"--baseline {pair!r}: {key!r} is not a key of the table; allowed: "
                             f"{', '.join(keys) or 'none (one configuration)'}")
        wanted.append((key, value))
    matches = [r for r in rows if all(same(r[k], v) for k, v in wanted)]
    given = " ".join(map(str, pairs))
    if not matches:
        allowed = "; ".join(f"{k}: {', '.join(dict.fromkeys(str(r[k]) for r in rows))}"
                            for k in dict.fromkeys(k for k, _ in wanted))
        raise ValueError(f"--baseline {given} matches no configuration; allowed: {allowed}")
    if len(matches) > 1:
        others = [k for k in keys if k not in dict(wanted)]
        raise ValueError(f"--baseline {given} matches {len(matches)} configurations "
                         f"({'; '.join(r['configuration'] for r in matches)}); add a KEY=VALUE "
                         f"of {', '.join(others)} to pick one")
    return matches[0]


def add_comparisons(rows: list[dict[str, Any]], members: dict[str, list[dict[str, Any]]],
                    columns: list[str], base: dict[str, Any]) -> None:
    """Per summary row and metric column, its comparison with the baseline row (`compare`) as
    the COMPARISON columns "<col> diff", ... (empty for the baseline itself and where a side has
    no ok value). members: configuration -> its rows of runs.csv."""
    for row in rows:
        for col in columns:
            ours, theirs = (ok_values(members[r["configuration"]], col) for r in (row, base))
            c = compare(ours, theirs) if ours and theirs and row is not base else None
            values = (None,) * len(COMPARISON) if c is None else (
                c.diff, c.low, c.high, c.p, c.higher, c.lower, c.paired)
            row.update({f"{col} {name}": v for name, v in zip(COMPARISON, values, strict=True)})


def signed(x: float) -> str:
    return f"{x:+.4g}"


def comparison_cell(row: dict[str, Any], col: str) -> str:
    """The text of a difference, e.g. "-38.9 [-80.1, +2.3], p = 0.071; 0↑ 3↓ of 3 seeds"."""
    diff = row.get(f"{col} diff")
    if diff is None:
        return "—"
    text = signed(diff)
    if row[f"{col} p"] is not None:
        text += f" [{signed(row[f'{col} diff low'])}, {signed(row[f'{col} diff high'])}], p = {row[f'{col} p']:.2g}"
    if row[f"{col} paired"]:
        text += f"; {row[f'{col} higher']}↑ {row[f'{col} lower']}↓ of {row[f'{col} paired']} seeds"
    return text


BASELINE_TEXT = (
    f"Each cell: the configuration's mean minus the baseline's, its {LEVEL:.0%} interval and the "
    "two-sided p-value of Welch's t-test over the ok seeds (left out with fewer than two seeds on "
    "a side, or no spread on either); then, among the seeds run once in both, how many were above "
    "(↑) and below (↓) the baseline's run of the same seed. Whether up is better depends on the "
    "metric.")
