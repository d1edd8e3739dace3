"""genlab-report's table: runs grouped into configurations, and per configuration and metric the
mean, standard deviation (n-1) and number of ok seeds; with a baseline, every configuration's
difference from it (genlab.stats).

A configuration is by default one distinct saved config apart from the seed and the keys in
NOT_CONFIGURATION, labelled by the runs' command-line overrides; with --group-by, the values of
the given dotted config keys (genlab.report.load.lookup). A component given as a mapping with a
name (`model.d_mode: {name: noise_head, aux_weight_d: 1.0}`) is keyed as `model.d_mode` (its
name) and `model.d_mode.aux_weight_d`, as if it were given by name with its settings apart.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from genlab import runs
from genlab.report.load import MISSING, NAME, Run, as_text, lookup
from genlab.stats import add_comparisons, find_baseline, ok_values

Identity = tuple[tuple[str, str], ...]


# Keys that say where and how a run was started, not what it computes: two runs that differ only
# here are the same configuration (resume=true for the second part of a study, another log folder).
NOT_CONFIGURATION = ("seed", *runs.STARTED)


def override_pairs(key: str, value: str) -> list[tuple[str, str]]:
    """An override as (key, value) pairs: one, or for a component given as a mapping with a name
    (`model.d_mode={name:noise_head,aux_weight_d:1.0}`) its name under its key and each other
    setting under key.setting, as `model.d_mode=noise_head model.d_mode.aux_weight_d=1.0` would
    say it."""
    if "." not in key or not value.startswith("{"):
        return [(key, value)]
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_override(f"{key}={value}").value()
    except Exception:  # not Hydra's syntax after all: the text as written
        return [(key, value)]
    if not isinstance(parsed, dict) or NAME not in parsed:
        return [(key, value)]
    return [(key, as_text(parsed[NAME])),
            *((f"{key}.{k}", as_text(v)) for k, v in parsed.items() if k != NAME)]


def identity(run: Run, group_by: list[str] | None) -> Identity:
    """The (key, value) pairs that name the run's configuration: the values of the group_by
    keys, or by default its overrides without the seed and the keys in NOT_CONFIGURATION."""
    if group_by:
        return tuple((key, as_text(lookup(run.config, key))) for key in group_by)
    pairs = []
    for override in run.overrides:
        key, _, value = override.partition("=")
        key = key.lstrip("+~")  # "+x=1" and "++x=1" set the same key as "x=1"
        if key.split(".", 1)[0] in NOT_CONFIGURATION:
            continue
        pairs += override_pairs(key, value)
    return tuple(sorted(pairs))


def flat(config: Any) -> dict[str, Any]:
    """{"model.objective.beta": 1, ...} without the keys that do not define a configuration; 2.0 == 2. A
    component given as a mapping with a name is keyed as one given by name: model.d_mode (its
    name) and model.d_mode.aux_weight_d, not model.d_mode.name (load.is_component)."""
    out = {}
    for key, value in runs.flat_config(config, NOT_CONFIGURATION).items():
        parent, _, last = key.rpartition(".")
        out[parent if last == NAME and "." in parent else key] = value
    return out


def fingerprint(run: Run) -> str:
    """The run's configuration: its saved config (interpolations such as ${seed} unresolved, so
    the seeds of one setting agree) without the keys in NOT_CONFIGURATION."""
    return json.dumps(flat(run.config), sort_keys=True, default=str)


def differing_keys(configs: list[dict[str, Any]]) -> list[str]:
    flats = [flat(c) for c in configs]
    keys = set().union(*flats)
    return sorted(k for k in keys if any(f.get(k, MISSING) != flats[0].get(k, MISSING) for f in flats))


def label(ident: Identity) -> str:
    return ", ".join(f"{k}={v}" for k, v in ident) or "(defaults)"


def natural(ident: Identity) -> tuple:
    """Sort key: numbers by value (beta=2 before beta=10), the rest as text."""
    out = []
    for key, value in ident:
        try:
            out.append((key, 0, float(value), ""))
        except ValueError:
            out.append((key, 1, 0.0, value))
    return tuple(out)


Groups = dict[Identity, list[Run]]


@dataclass
class Grouped:
    """Configurations -> their runs (in table order, each one's runs by seed), and the notes
    that say what the grouping joined or split."""
    groups: Groups
    notes: list[str] = field(default_factory=list)


def group_runs(loaded: list[Run], group_by: list[str] | None) -> Grouped:
    """Configurations -> their runs. By default one configuration per distinct saved config
    (without seed and the keys in NOT_CONFIGURATION), labelled by its overrides: two swept
    settings that resolve to the same config are one row, and a note says so. With group_by,
    the given keys' values, which may pool several configurations (a note names the keys that
    differ within a row)."""
    notes: list[str] = []
    groups: Groups = {}
    if group_by:
        for run in loaded:
            groups.setdefault(identity(run, group_by), []).append(run)
        for ident, members in groups.items():
            kinds = {fingerprint(r): r.config for r in members}
            if len(kinds) > 1:
                notes.append(f"{label(ident)} pools {len(kinds)} distinct configurations; they "
                             f"differ in {', '.join(differing_keys(list(kinds.values())))}")
    else:
        by_config: dict[str, list[Run]] = {}
        for run in loaded:
            by_config.setdefault(fingerprint(run), []).append(run)
        spellings: dict[Identity, list[Identity]] = {}  # a row -> its overrides, all spellings
        split: list[tuple[Identity, list[str]]] = []
        for members in by_config.values():
            idents = sorted({identity(r, None) for r in members})
            ident = idents[0]
            if ident in groups:  # same overrides, different configs (a preset edited mid-sweep)
                keys = differing_keys([groups[ident][0].config, members[0].config])
                split.append((ident, keys))
                ident = ident + tuple((k, as_text(lookup(members[0].config, k))) for k in keys)
            groups[ident], spellings[ident] = members, idents
        # Overrides every row shares (model=dcgan, debug=smoke) say nothing about a row: they
        # are named once, and the rows are labelled by what varies.
        common = set.intersection(*map(set, groups)) if len(groups) > 1 else set()
        short = lambda ident: tuple(p for p in ident if p not in common)  # noqa: E731
        if common:
            notes.append(f"every row: {label(tuple(sorted(common)))}")
        for idents in spellings.values():
            if len(idents) > 1:
                notes.append("identical configurations, shown as one row: "
                             + " and ".join(label(short(i)) for i in idents))
        for ident, keys in split:
            notes.append(f"{label(short(ident))} names runs of different configurations (they "
                         f"differ in {', '.join(keys)}); each is a row of its own")
        for ident, members in groups.items():
            seeds = [r.seed for r in members]
            repeated = sorted({str(s) for s in seeds if seeds.count(s) > 1})
            if repeated:
                notes.append(f"{label(short(ident))}: seed {', '.join(repeated)} ran more than "
                             "once, the same run repeated; every copy counts in the mean")
        groups = {short(ident): members for ident, members in groups.items()}
    for members in groups.values():  # so that "the first ok seed" is the lowest seed number
        members.sort(key=lambda r: (not isinstance(r.seed, int),
                                    r.seed if isinstance(r.seed, int) else 0, str(r.path)))
    return Grouped(dict(sorted(groups.items(), key=lambda item: natural(item[0]))), notes)


def metric_columns(loaded: list[Run], wanted: list[str] | None) -> list[str]:
    """Columns found in ok runs; with --metrics, those metrics (each extractor its own column)."""
    found = sorted({c for r in loaded if r.status == "ok" for c in r.values})
    if not wanted:
        return found
    base = lambda c: c.split(" [", 1)[0]  # noqa: E731
    columns = [c for m in wanted for c in found if base(c) == m]
    # A requested metric that no ok run has still gets its (empty) column, so its absence shows.
    columns += [m for m in wanted if not any(base(c) == m for c in found)]
    return columns


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and standard deviation (n - 1) of the values that are numbers: a NaN is a metric its
    run could not measure (the reason is in the run's metric_errors)."""
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def run_rows(groups: Groups, keys: list[str]) -> list[dict[str, Any]]:
    """runs.csv: one row per run, configuration by configuration: its configuration's label and
    key values, seed, status, every metric any run has (None where this one has none) and its
    folder. The summary table is computed from these rows alone (table_rows)."""
    members = [r for group in groups.values() for r in group]
    metrics = sorted({c for r in members for c in r.values})
    rows = []
    for ident, group in groups.items():
        for r in group:
            row: dict[str, Any] = {"configuration": label(ident)}
            row.update({k: dict(ident).get(k, "") for k in keys})
            row.update({"seed": r.seed, "status": r.status})
            row.update({m: r.values.get(m) for m in metrics})
            row["run"] = str(r.path)
            rows.append(row)
    return rows


def by_configuration(per_run: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    configurations: dict[str, list[dict[str, Any]]] = {}
    for row in per_run:
        configurations.setdefault(row["configuration"], []).append(row)
    return configurations


def table_rows(per_run: list[dict[str, Any]], columns: list[str],
               keys: list[str]) -> list[dict[str, Any]]:
    """summary.csv: per configuration of runs.csv's rows, its runs counted by status and, per
    metric column, the mean, standard deviation (n-1) and number of its ok runs."""
    rows = []
    for name, members in by_configuration(per_run).items():
        row: dict[str, Any] = {"configuration": name, **{k: members[0][k] for k in keys}}
        for status in runs.STATUSES:
            row[f"n_{status}"] = sum(m["status"] == status for m in members)
        for col in columns:
            values = [v for _, v in ok_values(members, col)]
            row[f"{col} mean"], row[f"{col} std"] = mean_std(values)
            row[f"{col} n"] = len(values)
        rows.append(row)
    return rows


@dataclass
class Table:
    """The report's numbers: the configurations and their runs (groups), the keys that name a
    configuration, the metric columns, runs.csv's rows (per_run) and summary.csv's (rows, with the
    comparison columns where there is a baseline), the baseline's row, and the notes on them."""
    groups: Groups
    keys: list[str]
    columns: list[str]
    per_run: list[dict[str, Any]]
    rows: list[dict[str, Any]]
    base: dict[str, Any] | None
    notes: list[str]


def tabulate(loaded: list[Run], group_by: list[str] | None, metrics: list[str] | None,
             baseline: list[str] | None, baseline_given: bool = True) -> Table:
    """The table of `loaded`: grouped by group_by (or by config), the `metrics` columns (or every
    metric of the ok runs), and with `baseline` (KEY=VALUE pairs) every configuration's difference
    from the configuration they pick (genlab.stats). A baseline that picks no single configuration
    raises ValueError (one line) when it was given on the command line (baseline_given), and is a
    note where it came from the study's preset: a sweep of part of the study may not hold it."""
    grouped = group_runs(loaded, group_by)
    notes = list(grouped.notes)
    columns = metric_columns(loaded, metrics)
    keys = group_by or sorted({k for ident in grouped.groups for k, _ in ident})
    per_run = run_rows(grouped.groups, keys)
    rows = table_rows(per_run, columns, keys)
    base = None
    if baseline:
        try:
            base = find_baseline(rows, keys, baseline)
        except ValueError as e:
            if baseline_given:
                raise
            notes.append(f"no comparison with the preset's report.baseline: {e}")
        if base is not None:
            add_comparisons(rows, by_configuration(per_run), columns, base)
    return Table(grouped.groups, keys, columns, per_run, rows, base, notes)
