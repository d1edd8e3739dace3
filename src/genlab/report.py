"""genlab-report: run directories -> a results table (markdown and CSV) and figures.

    genlab-report DIR [DIR ...] --out OUTDIR [--metrics val/elbo test/elbo ...]
                  [--group-by model.d_mode corruption.kind ...] [--x KEY]
                  [--lines KEY] [--step-metric val/elbo train/elbo ...]
                  [--grids traversal_orientation ...] [--panels generated reconstruction ...]
                  [--baseline KEY=VALUE ...] [--html]

Reads nothing but what a run directory holds (see genlab.runs): `.hydra/config.yaml`,
`.hydra/overrides.yaml`, `summary.json`, `metrics.csv`, `samples/generated_final.png`, and tests
`run.lock` to tell a running run that a process trains now from one that stopped without an end
(genlab.runs.run_holder). Runs are
grouped into configurations: by default one per distinct saved config apart from the seed (and
keys that only say where or how a run started, NOT_CONFIGURATION), labelled by the run's
command-line overrides, so the seeds of one setting fall together and two swept settings that
resolve to the same config are one row (the report says so); with --group-by, the values of the
given dotted config keys. For every configuration and metric it reports mean, standard deviation
(n-1) and the number of ok seeds; failed, diverged, running and pruned runs are counted apart
and never averaged; a column's numbers are rounded alike, to two significant digits of its finest
interval (508 ± 210, 0.437 ± 0.011). FID-like metrics are split by the feature extractor that
produced them, so "val/fid"
becomes "val/fid [genlab-fmnist-cnn]": numbers from different extractors are not comparable.
With --baseline KEY=VALUE (one configuration), every other configuration also gets, per metric,
its difference from the baseline's mean with Welch's 95% interval and p-value, and the seeds it
shares with the baseline counted by which way they went (genlab.stats).

Writes runs.csv (one row per run: the keys that define its configuration, seed, status, every
metric of its summary and its folder; the table is computed from these rows), summary.csv,
summary.md, PNG and PDF figures (each step metric against the training step,
metrics against --x, a config key or a value derived from the config, with one line per --lines
value under the study's names for them; every configuration's generated samples, with --grids any
other named grid of the runs, such as a traversal, and with --panels several grids of one seed per
configuration side by side: genlab.report_figures) and, with --html, report.html: one self-contained page with
the sortable table, the figures and each configuration's runs and samples.

A file that cannot be read (corrupt summary, malformed metrics.csv, broken PNG) is named on stderr
and in summary.md, and the report goes on; the exit status is 2 only when no run could be read.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import csv
import html
import io
import json
import math
import re
import shlex
import statistics
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.image
import numpy as np
import yaml
from matplotlib.figure import Figure
from omegaconf import OmegaConf
from PIL import Image

from genlab import report_figures, runs
from genlab.config import ArgumentParser
from genlab.stats import BASELINE_TEXT, add_comparisons, comparison_cell, find_baseline, ok_values

# Metrics computed in some feature space: only comparable under the same extractor.
FEATURE_METRIC = re.compile(r"(fid|kid|isc?|inception_score|precision|recall|prc)(_|$)")
MISSING = "(missing)"
LOG_SPAN = 100  # a curve figure whose values span more than this factor gets a log y axis


@dataclass
class Run:
    path: Path
    config: dict[str, Any]
    overrides: list[str]
    summary: dict[str, Any]
    values: dict[str, float]  # column name -> value, FID-like columns already split by extractor

    @property
    def status(self) -> str:
        return self.summary["status"]

    @property
    def seed(self) -> Any:
        return self.summary.get("seed")

    @property
    def trained_by(self) -> str | None:
        """For a running run, the process that trains it now ("pid P, host H"), from its lock."""
        return runs.run_holder(self.path) if self.status == "running" else None

    @property
    def status_text(self) -> str:
        if self.status != "running":
            return self.status
        holder = self.trained_by
        return (f"running, being trained now ({holder})" if holder else "running, but no "
                "process trains it (it stopped without an end; its command, run again, continues it)")


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="genlab-report", description="Run directories -> a results table (markdown and CSV) and figures.")
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="sweep or run directories")
    parser.add_argument("--out", required=True, type=Path, help="folder for the report")
    parser.add_argument("--metrics", nargs="+", metavar="M",
                        help="metrics to report (default: every metric in the summaries)")
    parser.add_argument("--group-by", nargs="+", metavar="KEY",
                        help="dotted config keys that define a configuration "
                             "(default: the overrides without seed and hydra.*)")
    parser.add_argument("--x", metavar="KEY",
                        help="dotted config key to put on the x axis of a metric-vs-value figure "
                             "(a preset's report.x may also derive it: genlab.report_figures)")
    parser.add_argument("--lines", metavar="KEY",
                        help="dotted config key: one line per value in the --x figures (default: "
                             "one per setting of the grouping keys not on the x axis)")
    parser.add_argument("--step-metric", nargs="+", metavar="M",
                        help="metrics from metrics.csv to plot against training step, one figure "
                             "each (default: the runs' objective.metric)")
    parser.add_argument("--grids", nargs="+", metavar="NAME",
                        help="more sample grids to show, one figure each: samples/NAME_final.png "
                             "of each configuration's first ok seed (e.g. traversal_orientation)")
    parser.add_argument("--panels", nargs="+", metavar="NAME",
                        help="grids to show side by side, one row per configuration (one seed): "
                             "samples/NAME_final.png, e.g. generated expost reconstruction")
    parser.add_argument("--baseline", nargs="+", metavar="KEY=VALUE",
                        help="the configuration to compare every other one with (difference, "
                             "Welch 95%% interval, p-value, seeds higher/lower), e.g. arm=plain; "
                             "several pairs when one does not single it out")
    parser.add_argument("--html", action="store_true",
                        help="also write OUT/report.html, one self-contained file")
    args = parser.parse_args(argv)
    # user errors end in one line and exit code 2, before anything is written
    for d in args.dirs:
        if not Path(d).is_dir():
            return _user_error(f"DIR {d!r} is not a folder")
    if args.out.exists() and not args.out.is_dir():
        return _user_error(f"--out {str(args.out)!r} exists and is not a folder")

    skipped: list[str] = []
    with contextlib.redirect_stderr(io.StringIO()) as skip_lines:  # reported below, or in the error
        loaded = load_runs(args.dirs, skipped)
    if not loaded:
        why = f"; {skipped[0]}" if skipped else ""
        why += f" (and {len(skipped) - 1} more)" if len(skipped) > 1 else ""
        return _user_error(f"no run could be read under {' '.join(args.dirs)} (a run directory "
                           f"holds .hydra/config.yaml and summary.json){why}")
    sys.stderr.write(skip_lines.getvalue())
    typo = unknown_argument(args, loaded)
    if typo:
        return _user_error(typo)
    baseline_given = args.baseline is not None
    apply_preset(args, loaded[0].config)
    try:
        axis = report_figures.parse_axis(args.x) if args.x else None
        lines = report_figures.parse_lines(args.lines)
        panels = report_figures.parse_panels(args.panels)
        for run in loaded if axis else ():
            axis.value(run.config)  # numbers where it takes the largest of several keys
    except report_figures.SpecError as e:
        return _user_error(str(e))

    notes: list[str] = []
    groups = group_runs(loaded, args.group_by, notes)
    columns = metric_columns(loaded, args.metrics)
    keys = args.group_by or sorted({k for ident in groups for k, _ in ident})
    per_run = run_rows(groups, keys)
    rows = table_rows(per_run, columns, keys)
    base = None
    if args.baseline:
        try:
            base = find_baseline(rows, keys, args.baseline)
        except ValueError as e:
            if baseline_given:
                return _user_error(str(e))
            # the preset names its baseline; a sweep of part of the study may not hold it
            notes.append(f"no comparison with the preset's report.baseline: {e}")
        if base is not None:
            add_comparisons(rows, by_configuration(per_run), columns, base)

    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return _user_error(f"--out {str(args.out)!r}: cannot create it ({e.strerror or e})")
    write_csv(args.out / "runs.csv", per_run)
    write_csv(args.out / "summary.csv", rows)
    figures = [plot_curves(args.out, groups, m, skipped) for m in args.step_metric]
    if axis:
        figures += [report_figures.plot_against(args.out, groups, axis, col, lines) for col in columns]
    images = final_grids(groups, skipped)
    figures.append(plot_samples(args.out, groups, images))
    if panels:
        figures.append(report_figures.plot_panels(args.out, groups, panels, skipped))
    for grid in args.grids or []:
        figures.append(plot_samples(args.out, groups, final_grids(groups, skipped, grid), grid))
    figures += search_figures(args.out, args.dirs)
    figures = [f for f in figures if f]
    write_markdown(args.out / "summary.md", args, loaded, rows, columns, figures, skipped, notes, base)
    if args.html:
        write_html(args.out / "report.html", args, loaded, groups, rows, columns, figures,
                   skipped, notes, images, base)
    print(f"genlab-report: {len(loaded)} runs, {len(groups)} configurations -> {args.out}")
    return 0


def _user_error(message: str) -> int:
    print(f"genlab-report: error: {message}", file=sys.stderr)
    return 2


def unknown_argument(args: argparse.Namespace, loaded: list[Run]) -> str | None:
    """A --metrics, --x, --lines, --step-metric, --grids or --panels that no run has is a typo: say so rather than
    draw an empty column or no figure."""
    have = sorted({k for r in loaded for k in r.summary if "/" in k})
    grids = sorted({p.name[:-len("_final.png")] for r in loaded
                    for p in (r.path / "samples").glob("*_final.png")})
    for option in ("grids", "panels"):
        for g in getattr(args, option) or []:
            if g not in grids:
                return (f"--{option} {g!r}: no run has samples/{g}_final.png; allowed: "
                        f"{', '.join(grids) or 'none (no samples/*_final.png)'}")
    for m in args.metrics or []:
        if m not in have:
            return f"--metrics {m!r} is in no run's summary.json; allowed: {', '.join(have)}"
    for option in ("x", "lines"):
        key = getattr(args, option)
        if key and all(lookup(r.config, key) is MISSING for r in loaded):
            return f"--{option} {key!r} is a key of no run's .hydra/config.yaml (e.g. model.beta)"
    if args.step_metric:
        logged: set[str] = set()
        for r in loaded:
            try:
                with open(r.path / "metrics.csv", newline="") as f:
                    logged.update(next(csv.reader(f), []))
            except OSError:
                continue
        for m in args.step_metric:
            if m not in logged:
                return (f"--step-metric {m!r} is in no run's metrics.csv; allowed: "
                        f"{', '.join(sorted(logged - {'step', 'epoch'})) or 'none (no metrics.csv)'}")
    return None


def apply_preset(args: argparse.Namespace, config: dict[str, Any]) -> None:
    """Arguments not given on the command line come from the study's preset: its `report:` block
    (group_by, metrics, x, lines, step_metric, grids, panels, baseline) in the runs' resolved
    config, then objective.metric. step_metric and baseline may be one value or a list; x, lines
    and panels are read by genlab.report_figures."""
    preset = config.get("report") or {}
    for key in ("group_by", "metrics", "x", "lines", "step_metric", "grids", "panels", "baseline"):
        if getattr(args, key) is None and preset.get(key):
            setattr(args, key, preset[key])
    if args.step_metric is None:
        args.step_metric = (config.get("objective") or {}).get("metric", "val/elbo")
    for key in ("step_metric", "baseline"):
        if isinstance(getattr(args, key), str):
            setattr(args, key, [getattr(args, key)])


def skip(skipped: list[str], what: str) -> None:
    """Record an unreadable file ("PATH: reason"); it is printed now and listed in summary.md."""
    line = f"skipped: {what}"
    skipped.append(line)
    print(line, file=sys.stderr)


# --- reading -------------------------------------------------------------------------------------

def load_runs(dirs: list[str], skipped: list[str]) -> list[Run]:
    for d in dirs:
        if not Path(d).exists():
            skip(skipped, f"{d}: does not exist")
    loaded = []
    for path in runs.find_runs(*dirs):
        try:
            config = _read_yaml(path / ".hydra" / "config.yaml", dict)
            overrides_file = path / ".hydra" / "overrides.yaml"
            overrides = _read_yaml(overrides_file, list) if overrides_file.is_file() else []
            summary = runs.read_summary(path)
        except (runs.RunReadError, _Unreadable) as e:  # both say "PATH: reason"
            skip(skipped, str(e))
            continue
        except OSError as e:  # permissions, a folder where a file should be
            skip(skipped, f"{e.filename or path}: {e.strerror or e}")
            continue
        if summary["status"] not in runs.STATUSES:
            skip(skipped, f"{path / runs.SUMMARY}: unknown status {summary['status']!r}")
            continue
        loaded.append(Run(path, config, [str(o) for o in overrides], summary,
                          summary_values(summary)))
    return loaded


class _Unreadable(Exception):
    """A file the report cannot use; the message is "PATH: reason"."""


def _read_yaml(path: Path, kind: type) -> Any:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise _Unreadable(f"{path}: unreadable ({type(e).__name__}: {e})") from e
    if data is None:
        data = kind()
    if not isinstance(data, kind):
        raise _Unreadable(f"{path}: expected a YAML {kind.__name__}, got {type(data).__name__}")
    return data


def summary_values(summary: dict[str, Any]) -> dict[str, float]:
    """Metric values from a flat summary, keyed by report column.

    Metrics are the keys with a slash (val/elbo, test/fid); non-finite values were written as
    strings ("nan") by runs.write_summary and come back as floats here.
    """
    values = {}
    for key, v in summary.items():
        if "/" not in key or isinstance(v, bool):
            continue
        try:
            values[column_name(key, summary)] = float(v)
        except (TypeError, ValueError):
            continue  # a non-numeric entry under a metric-like name is not a metric
    return values


def column_name(metric: str, summary: dict[str, Any]) -> str:
    if FEATURE_METRIC.match(metric.rsplit("/", 1)[-1]):
        return f"{metric} [{summary.get('fid_extractor') or 'unknown extractor'}]"
    return metric


def lookup(config: dict[str, Any], dotted: str) -> Any:
    """The value at a dotted key of a saved config, MISSING where there is none. A value that is
    an interpolation into the config itself (a preset's `${arms.${arm}.iwae_k}`) is resolved, so
    runs group by what they ran with; one that cannot be resolved here stays as written."""
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return MISSING
        node = node[part]
    if isinstance(node, str) and "${" in node:
        with contextlib.suppress(Exception):  # a resolver only genlab-train registers, a typo
            return OmegaConf.select(OmegaConf.create(config), dotted)
    return node


def as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


# --- grouping and the table ----------------------------------------------------------------------

Identity = tuple[tuple[str, str], ...]


# Keys that say where and how a run was started, not what it computes: two runs that differ only
# here are the same configuration (resume=true for the second part of a study, another log folder).
NOT_CONFIGURATION = ("seed", *runs.STARTED)


def identity(run: Run, group_by: list[str] | None) -> Identity:
    if group_by:
        return tuple((key, as_text(lookup(run.config, key))) for key in group_by)
    pairs = []
    for override in run.overrides:
        key, _, value = override.partition("=")
        key = key.lstrip("+~")  # "+x=1" and "++x=1" set the same key as "x=1"
        if key.split(".", 1)[0] in NOT_CONFIGURATION:
            continue
        pairs.append((key, value))
    return tuple(sorted(pairs))


def flat(config: Any) -> dict[str, Any]:
    """{"model.beta": 1, ...} without the keys that do not define a configuration; 2.0 == 2."""
    return runs.flat_config(config, NOT_CONFIGURATION)


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


def _natural(ident: Identity) -> tuple:
    """Sort key: numbers by value (beta=2 before beta=10), the rest as text."""
    out = []
    for key, value in ident:
        try:
            out.append((key, 0, float(value), ""))
        except ValueError:
            out.append((key, 1, 0.0, value))
    return tuple(out)


def group_runs(loaded: list[Run], group_by: list[str] | None,
               notes: list[str] | None = None) -> dict[Identity, list[Run]]:
    """Configurations -> their runs. By default one configuration per distinct saved config
    (without seed and the keys in NOT_CONFIGURATION), labelled by its overrides: two swept
    settings that resolve to the same config are one row, and `notes` says so. With group_by,
    the given keys' values, which may pool several configurations (`notes` names the keys that
    differ within a row)."""
    notes = [] if notes is None else notes
    groups: dict[Identity, list[Run]] = {}
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
    return dict(sorted(groups.items(), key=lambda item: _natural(item[0])))


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
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def run_rows(groups: dict[Identity, list[Run]], keys: list[str]) -> list[dict[str, Any]]:
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


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})  # empty = no value
    runs.atomic_write_text(path, text.getvalue())


def fmt(x: float | None, decimals: int) -> str:
    return "—" if x is None else f"{x:.{decimals}f}"


def significant(x: float, digits: int) -> int:
    """Decimal places that show x to `digits` significant digits (0 for the integer places)."""
    return max(0, digits - 1 - math.floor(math.log10(abs(x))))


def column_decimals(rows: list[dict[str, Any]], col: str) -> int:
    """One format per column: the decimal places of its finest interval at two significant
    digits (508 ± 210, 0.437 ± 0.011); a column without spread, four significant digits of its
    largest value."""
    stds = [abs(row[f"{col} std"]) for row in rows
            if row[f"{col} std"] is not None and math.isfinite(row[f"{col} std"]) and row[f"{col} std"] > 0]
    if stds:
        return significant(min(stds), 2)
    means = [abs(row[f"{col} mean"]) for row in rows
             if row[f"{col} mean"] is not None and math.isfinite(row[f"{col} mean"]) and row[f"{col} mean"] > 0]
    return significant(max(means), 4) if means else 0


def cell(row: dict[str, Any], col: str, decimals: int) -> str:
    """mean ± std (n), the std rounded to two significant digits, both at `decimals` places."""
    mean, std, n = row[f"{col} mean"], row[f"{col} std"], row[f"{col} n"]
    if mean is None:
        return "—"
    if std is None:
        return f"{fmt(mean, decimals)} ({n})"
    if std > 0 and math.isfinite(std):
        std = round(std, 1 - math.floor(math.log10(std)))  # two significant digits
    return f"{fmt(mean, decimals)} ± {fmt(std, decimals)} ({n})"


def intro(args: argparse.Namespace, loaded: list[Run]) -> list[str]:
    """The report's opening paragraphs: what was read and how to read the table."""
    counts = ", ".join(f"{s} {sum(r.status == s for r in loaded)}" for s in runs.STATUSES)
    live = sum(r.trained_by is not None for r in loaded)
    if live:
        counts += f"; {live} of the running being trained now"
    grouping = (f"the values of {', '.join(args.group_by)}" if args.group_by
                else "a distinct saved config (apart from " + ", ".join(NOT_CONFIGURATION)
                + "), labelled by its overrides")
    return [
        f"Runs read: {len(loaded)} ({counts}) from {', '.join(args.dirs)}.",
        f"A configuration (a row) is {grouping}. Each cell is mean ± standard deviation (n-1) "
        "over the ok seeds, with the number of seeds in brackets, computed from runs.csv (every "
        "run's seed, status and values). Runs that did not end ok are "
        "counted in their own columns and never averaged. FID-like metrics carry the feature "
        "extractor in the column name; different extractors are never mixed. Validation values "
        "(val/...) are those of each run's best checkpoint; the step curves show the per-epoch "
        "values, with the best checkpoints' value as a separate star.",
    ]


def write_markdown(path: Path, args: argparse.Namespace, loaded: list[Run],
                   rows: list[dict[str, Any]], columns: list[str], figures: list[str],
                   skipped: list[str], notes: list[str] = (),
                   base: dict[str, Any] | None = None) -> None:
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    decimals = {col: column_decimals(rows, col) for col in columns}
    lines = [
        "# genlab report", "", *[line for p in intro(args, loaded) for line in (p, "")],
        "| configuration | " + " | ".join([*runs.STATUSES, *map(esc, columns)]) + " |",
        "|---" * (1 + len(runs.STATUSES) + len(columns)) + "|",
    ]
    for row in rows:
        cells = [esc(row["configuration"])] + [str(row[f"n_{s}"]) for s in runs.STATUSES]
        cells += [cell(row, col, decimals[col]) for col in columns]
        lines.append("| " + " | ".join(cells) + " |")
    if notes:
        lines += ["", *[f"- {n}" for n in notes]]
    if base is not None:
        lines += ["", f"## Differences from the baseline: {esc(base['configuration'])}", "",
                  BASELINE_TEXT, "",
                  "| configuration | " + " | ".join(map(esc, columns)) + " |",
                  "|---" * (1 + len(columns)) + "|"]
        for row in rows:
            cells = ["baseline" if row is base else comparison_cell(row, col) for col in columns]
            lines.append("| " + " | ".join([esc(row["configuration"]), *cells]) + " |")

    lines += ["", "## Figures", ""]
    for name in figures:
        lines += [f"![{name}]({name}.png) ([pdf]({name}.pdf))", ""]
    if not args.x:
        lines += ["Pass `--x KEY` for a metric-against-value figure.", ""]

    not_ok = [r for r in loaded if r.status != "ok"]
    if not_ok:
        lines += ["", "## Runs not averaged", ""]
        lines += [f"- {r.path}: {r.status_text} (seed {r.seed})" for r in not_ok]
    if skipped:
        lines += ["", "## Skipped", ""]
        lines += [f"- {s}" for s in skipped]
    runs.atomic_write_text(path, "\n".join(lines) + "\n")


# --- the HTML report ---------------------------------------------------------------------------

HTML_STYLE = """
body { font-family: sans-serif; margin: 2em; max-width: 1400px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
div.scroll { overflow-x: auto; max-width: 100%; }  /* a wide table scrolls inside its box */
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
table.sortable th { cursor: pointer; background: #f2f2f2; white-space: nowrap; }
table.sortable th[data-dir=asc]::after { content: " ▲"; }
table.sortable th[data-dir=desc]::after { content: " ▼"; }
figure { display: inline-block; margin: 0.5em 1em 0.5em 0; }
figure.figure img { max-width: 100%; }
figure.grid img { width: 240px; image-rendering: pixelated; }
code { font-size: 0.85em; word-break: break-all; }
"""

# Click a header to sort by it (again to reverse). Numbers by value, empty cells last either way.
SORT_SCRIPT = """
document.querySelectorAll("table.sortable th").forEach(th => th.addEventListener("click", () => {
  const body = th.closest("table").tBodies[0], col = th.cellIndex;
  const dir = th.dataset.dir === "asc" ? -1 : 1;
  th.closest("tr").querySelectorAll("th").forEach(h => delete h.dataset.dir);
  th.dataset.dir = dir > 0 ? "asc" : "desc";
  const key = tr => tr.cells[col].dataset.value;
  [...body.rows].sort((a, b) => {
    const x = key(a), y = key(b);
    if (x === "" || y === "") return (x === "") - (y === "");
    const nx = Number(x), ny = Number(y);
    return dir * (isNaN(nx) || isNaN(ny) ? x.localeCompare(y) : nx - ny);
  }).forEach(tr => body.appendChild(tr));
}));
"""


def data_uri(png: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(compact_png(png.read_bytes())).decode("ascii")


def compact_png(data: bytes) -> bytes:
    """The same picture in fewer bytes: an opaque image whose colour channels are equal (sample
    grids, the samples figure) is stored as 8-bit grey, anything else without an opaque alpha
    channel; both losslessly, at PNG's highest compression. Keeps report.html small."""
    image = Image.open(io.BytesIO(data))
    pixels = np.asarray(image.convert("RGBA"))
    if (pixels[..., 3] == 255).all():
        rgb = pixels[..., :3]
        image = Image.fromarray(rgb[..., 0]) if (rgb == rgb[..., :1]).all() else Image.fromarray(rgb)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue() if out.tell() < len(data) else data


def command(run: Run) -> str:
    """The command line that repeats the run: its overrides (Hydra's own settings left out)."""
    kept = [o for o in run.overrides if o.partition("=")[0].lstrip("+~").split(".", 1)[0] != "hydra"]
    return shlex.join(["genlab-train", *kept])


def write_html(path: Path, args: argparse.Namespace, loaded: list[Run],
               groups: dict[Identity, list[Run]], rows: list[dict[str, Any]], columns: list[str],
               figures: list[str], skipped: list[str], notes: list[str],
               images: dict[Path, Any], base: dict[str, Any] | None = None) -> None:
    """One self-contained page (figures and sample grids inlined as data URIs, no network): the
    summary table (and with a baseline, the differences from it), sortable by clicking a header;
    the figures; and per configuration its runs (seed, status, values, folder, command) and their
    generated samples."""
    e = html.escape
    decimals = {col: column_decimals(rows, col) for col in columns}
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           "<title>genlab report</title>", f"<style>{HTML_STYLE}</style></head><body>",
           "<h1>genlab report</h1>", *[f"<p>{e(p)}</p>" for p in intro(args, loaded)]]

    out.append('<div class="scroll"><table id="summary" class="sortable"><thead><tr>')
    out += [f"<th>{e(h)}</th>" for h in ["configuration", *runs.STATUSES, *columns]]
    out.append("</tr></thead><tbody>")
    for row in rows:
        out.append(f'<tr><td data-value="{e(row["configuration"])}">'
                   f'<a href="#{slug(row["configuration"])}">{e(row["configuration"])}</a></td>')
        out += [f'<td data-value="{row[f"n_{s}"]}">{row[f"n_{s}"]}</td>' for s in runs.STATUSES]
        for col in columns:
            mean = row[f"{col} mean"]
            out.append(f'<td data-value="{"" if mean is None else repr(mean)}">{e(cell(row, col, decimals[col]))}</td>')
        out.append("</tr>")
    out.append("</tbody></table></div>")
    if notes:
        out += ["<ul>", *[f"<li>{e(n)}</li>" for n in notes], "</ul>"]
    if base is not None:
        out += [f"<h2>Differences from the baseline: {e(base['configuration'])}</h2>",
                f"<p>{e(BASELINE_TEXT)}</p>", '<div class="scroll"><table id="baseline" class="sortable"><thead><tr>',
                *[f"<th>{e(h)}</th>" for h in ["configuration", *columns]], "</tr></thead><tbody>"]
        for row in rows:
            out.append(f'<tr><td data-value="{e(row["configuration"])}">{e(row["configuration"])}</td>')
            for col in columns:
                diff = row[f"{col} diff"]
                text = "baseline" if row is base else comparison_cell(row, col)
                out.append(f'<td data-value="{"" if diff is None else repr(diff)}">{e(text)}</td>')
            out.append("</tr>")
        out.append("</tbody></table></div>")

    out.append("<h2>Figures</h2>")
    for name in figures:
        out.append(f'<figure class="figure"><img src="{data_uri(path.parent / f"{name}.png")}" '
                   f'alt="{e(name)}"><figcaption>{e(name)}</figcaption></figure>')

    out.append("<h2>Configurations</h2>")
    for ident, members in groups.items():
        name = label(ident)
        out += [f'<section class="configuration" id="{slug(name)}"><h3>{e(name)}</h3>',
                '<div class="scroll"><table><tr><th>seed</th><th>status</th>', *[f"<th>{e(c)}</th>" for c in columns],
                "<th>run folder</th><th>command</th></tr>"]
        for r in members:  # each run's own values (runs.csv), beside its folder and command
            out += [f"<tr><td>{e(str(r.seed))}</td><td>{e(r.status)}</td>",
                    *[f"<td>{fmt(r.values.get(c), decimals[c])}</td>" for c in columns],
                    f"<td><code>{e(str(r.path))}</code></td><td><code>{e(command(r))}</code></td></tr>"]
        out.append("</table></div>")
        grids = [r for r in members if r.path in images]
        out += [f'<figure class="grid"><img src="{data_uri(runs.final_grid(r.path))}" '
                f'alt="generated samples, seed {e(str(r.seed))}"><figcaption>generated samples, '
                f"seed {e(str(r.seed))}</figcaption></figure>" for r in grids]
        if not grids:
            out.append("<p>No generated samples (samples/generated_final.png) in an ok run.</p>")
        out.append("</section>")

    if skipped:
        out += ["<h2>Skipped</h2><ul>", *[f"<li>{e(s)}</li>" for s in skipped], "</ul>"]
    out += [f"<script>{SORT_SCRIPT}</script>", "</body></html>"]
    runs.atomic_write_text(path, "\n".join(out) + "\n")


# --- figures -------------------------------------------------------------------------------------

def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=-]+", "_", name).strip("_")


DPI = 150  # every figure's PNG and PDF


def save(fig: Figure, out: Path, name: str) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    (out / f"{name}.png").write_bytes(compact_png(buffer.getvalue()))
    # no creation date: a report rebuilt from the same runs writes the same PDF bytes
    fig.savefig(out / f"{name}.pdf", dpi=DPI, metadata={"CreationDate": None})
    return name


def search_figures(out: Path, dirs: list[str]) -> list[str]:
    """For each Optuna search folder among `dirs` (its study in optuna.journal): the optimisation
    history and, from two complete trials on, the parameter importances, drawn by Optuna's own
    matplotlib functions."""
    from genlab.search import JOURNAL, open_storage

    names = []
    for d in dirs:
        if not (Path(d) / JOURNAL).is_file():
            continue
        import warnings

        import matplotlib.pyplot as plt
        import optuna
        import optuna.visualization.matplotlib as ovm

        storage = open_storage(Path(d) / JOURNAL)
        for summary in optuna.get_all_study_summaries(storage):
            study = optuna.load_study(study_name=summary.study_name, storage=storage)
            done = len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)))
            for kind, plot, needs in [("history", ovm.plot_optimization_history, 1),
                                      ("importances", ovm.plot_param_importances, 2)]:
                if done < needs:
                    continue
                with warnings.catch_warnings():  # the functions are marked experimental
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    fig = plot(study).figure
                fig.set_size_inches(6.4, 4.2)
                fig.tight_layout()
                names.append(save(fig, out, slug(f"search_{kind}_{study.study_name}")))
                plt.close(fig)
    return names


def read_curve(path: Path, metric: str, epochs: int | None = None) -> dict[int, float]:
    """step -> value of one metric from a Lightning CSVLogger metrics.csv (sparse: most cells empty).

    With `epochs` (the number of epochs the run trained, summary.json's "epochs"), only rows of
    epochs 0 .. epochs - 1 count: genlab-train's validation and test of the best checkpoint after
    training are logged under epoch `epochs`, and are not a point of the training curve.
    """
    curve = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "step" not in reader.fieldnames:
            raise ValueError("no 'step' column")
        if metric not in reader.fieldnames:
            return curve
        for line in reader:
            cell = line.get(metric)
            if not cell:
                continue
            if epochs is not None and line.get("epoch") and int(float(line["epoch"])) >= epochs:
                continue
            curve[int(float(line["step"]))] = float(cell)  # a later row for a step wins, as in the logger
    return curve


@dataclass
class Curve:
    """One configuration's line: per-epoch means over its ok seeds at the steps they all share,
    and, apart from the line, the final validation of the best checkpoints (summary.json)."""
    label: str
    steps: list[int]
    mean: list[float]
    std: list[float] | None  # None with one seed
    n: int
    best_mean: float | None
    best_std: float | None


def curve_series(groups: dict[Identity, list[Run]], metric: str,
                 skipped: list[str]) -> list[Curve]:
    series = []
    for ident, members in groups.items():
        curves, best = [], []
        for run in (r for r in members if r.status == "ok"):
            path = run.path / "metrics.csv"
            if not path.is_file():
                continue  # not every run logs to CSV; the legend's n shows how many did
            epochs = run.summary.get("epochs")
            try:
                curve = read_curve(path, metric, epochs if isinstance(epochs, int) else None)
            except (OSError, UnicodeDecodeError, csv.Error, ValueError, TypeError) as e:
                skip(skipped, f"{path}: malformed ({e})")
                continue
            if curve:
                curves.append(curve)
                final = summary_values({metric: run.summary.get(metric)})
                best += [v for v in final.values() if math.isfinite(v)]
        if not curves:
            continue
        # Seeds can be evaluated at different steps (a crash, a changed interval); only steps
        # every seed has are averaged, so the band never mixes n=3 and n=1 points.
        steps = sorted(set.intersection(*(set(c) for c in curves)))
        if not steps:
            continue
        ys = [[c[s] for c in curves] for s in steps]
        best_mean, best_std = mean_std(best)
        series.append(Curve(label(ident), steps, [statistics.fmean(y) for y in ys],
                            [statistics.stdev(y) for y in ys] if len(curves) > 1 else None,
                            len(curves), best_mean, best_std))
    return series


def curve_figure(series: list[Curve], metric: str) -> Figure:
    """Each configuration's per-epoch line (± 1 std band) and, as an unconnected star at the
    right end, the mean of its best checkpoints' final validation."""
    names = [report_figures.wrap(c.label) for c in series]  # a long label would squash the axes
    # a legend this long goes beside the axes, not over the lines
    outside = len(series) > 6 or sum(n.count("\n") + 1 for n in names) > 8
    fig = Figure(figsize=(10 if outside else 7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    end = max(c.steps[-1] for c in series)
    # more lines than the default cycle's 10 colours would repeat a colour
    colours = matplotlib.colormaps["tab20"].colors if len(series) > 10 else [None] * len(series)
    for c, name, colour in zip(series, names, colours, strict=False):
        line, = ax.plot(c.steps, c.mean, marker="." if len(c.steps) < 30 else None,
                        label=f"{name} (n={c.n})", color=colour)
        if c.std is not None:
            ax.fill_between(c.steps, [m - s for m, s in zip(c.mean, c.std, strict=True)],
                            [m + s for m, s in zip(c.mean, c.std, strict=True)],
                            color=line.get_color(), alpha=0.2, linewidth=0)
        if c.best_mean is not None:
            ax.errorbar([end], [c.best_mean], yerr=None if c.best_std is None else [c.best_std],
                        marker="*", markersize=10, linestyle="none", capsize=3,
                        color=line.get_color())
    starred = any(c.best_mean is not None for c in series)
    if starred:
        ax.plot([], [], marker="*", linestyle="none", color="grey",
                label="best checkpoint, final validation")
    values = [v for c in series for v in [*c.mean, c.best_mean] if v is not None]
    log = min(values) > 0 and max(values) > LOG_SPAN * min(values)
    if log:  # one diverging configuration would flatten every other line on a linear axis
        ax.set_yscale("log")
    ax.set(xlabel="training step", ylabel=metric + (" (log scale)" if log else ""),
           title=f"{metric} during training (mean ± 1 std)"
           + ("; ★ best checkpoint" if starred else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", **({"loc": "upper left", "bbox_to_anchor": (1.01, 1)} if outside else {}))
    return fig


def plot_curves(out: Path, groups: dict[Identity, list[Run]], metric: str,
                skipped: list[str]) -> str | None:
    series = curve_series(groups, metric, skipped)
    return save(curve_figure(series, metric), out, f"curve_{slug(metric)}") if series else None


def final_grids(groups: dict[Identity, list[Run]], skipped: list[str],
                name: str = runs.GENERATED) -> dict[Path, Any]:
    """run path -> its grid `name` (samples/<name>_final.png; by default the generated samples)
    as an image array, for every ok run that has a readable one. Other grids (reconstructions,
    degraded real images, chains) are never taken for generated samples."""
    images = {}
    for members in groups.values():
        for run in (r for r in members if r.status == "ok"):
            path = runs.final_grid(run.path, name)
            if not path.is_file():
                continue
            try:
                images[run.path] = matplotlib.image.imread(path)
            except Exception as e:  # Pillow raises several types for a broken PNG
                skip(skipped, f"{path}: unreadable image ({type(e).__name__}: {e})")
    return images


def plot_samples(out: Path, groups: dict[Identity, list[Run]], images: dict[Path, Any],
                 grid: str = runs.GENERATED) -> str | None:
    """samples.png|pdf for the generated samples, <grid>.png|pdf for another grid."""
    fig = samples_figure(groups, images, grid)
    return save(fig, out, "samples" if grid == runs.GENERATED else grid) if fig else None


def samples_figure(groups: dict[Identity, list[Run]], images: dict[Path, Any],
                   grid: str = runs.GENERATED) -> Figure | None:
    """One grid (by default the generated samples) of the first ok seed with a readable one, for
    each configuration, four to a row. Each grid is drawn at its own size, one image pixel to one
    pixel of the saved PNG (at DPI), so the figure holds no more pixels than its grids and the
    report page stays small."""
    what = "generated samples" if grid == runs.GENERATED else grid.replace("_", " ")
    panels = []
    for ident, members in groups.items():
        run = next((r for r in members if r.path in images), None)
        if run is not None:
            panels.append((f"{label(ident)}\n{what}, seed {run.seed}", images[run.path]))
    if not panels:
        return None
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    # A cell in pixels: the widest grid (at least wide enough for a 26-character title line in
    # 7-point type), a margin around it, and room above it for the tallest title.
    pad = 12
    width = max(240, *(image.shape[1] for _, image in panels))
    height = max(image.shape[0] for _, image in panels)
    titles = ["\n".join(w for line in title.split("\n")
                         for w in textwrap.wrap(line, width // 9) or [""]) for title, _ in panels]
    title_px = math.ceil(max(t.count("\n") + 1 for t in titles) * 7 * 1.3 * DPI / 72) + pad
    cell_w, cell_h = width + 2 * pad, height + title_px + pad
    fig = Figure(figsize=(cols * cell_w / DPI, rows * cell_h / DPI))
    for i, (title, (_, image)) in enumerate(zip(titles, panels, strict=True)):
        row, col = divmod(i, cols)
        h, w = image.shape[:2]
        left = col * cell_w + pad + (width - w) // 2
        bottom = (rows - 1 - row) * cell_h + pad + (height - h)
        ax = fig.add_axes((left / (cols * cell_w), bottom / (rows * cell_h),
                           w / (cols * cell_w), h / (rows * cell_h)))
        # imread gives PNGs as floats in [0, 1]; fixing the range keeps a flat image from
        # being stretched to black.
        ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest", aspect="auto")
        ax.set_title(title, fontsize=7)
        ax.axis("off")
    return fig


if __name__ == "__main__":
    sys.exit(main())
