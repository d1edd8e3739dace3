"""genlab-report's command line: main() reads the arguments (those not given come from the study
preset's `report:` block, apply_preset), refuses a user error in one line with exit code 2 before
anything is written, and writes the report (see the package docstring, genlab.report)."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Any

from genlab import runs
from genlab.config import ArgumentParser
from genlab.report import spec
from genlab.report.figures import draw_figures
from genlab.report.groups import tabulate
from genlab.report.load import MISSING, Run, load_runs, lookup
from genlab.report.writers import Report, write_csv, write_html, write_markdown


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
                             "(a preset's report.x may also derive it: genlab.report.spec)")
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

    read = load_runs(args.dirs)
    if not read.runs:
        why = f"; {read.skipped[0]}" if read.skipped else ""
        why += f" (and {len(read.skipped) - 1} more)" if len(read.skipped) > 1 else ""
        return _user_error(f"no run could be read under {' '.join(args.dirs)} (a run directory "
                           f"holds .hydra/config.yaml and summary.json){why}")
    tell(read.skipped)
    loaded = read.runs
    typo = unknown_argument(args, loaded)
    if typo:
        return _user_error(typo)
    baseline_given = args.baseline is not None
    apply_preset(args, loaded[0].config)
    try:
        axis = spec.parse_axis(args.x) if args.x else None
        lines = spec.parse_lines(args.lines)
        panels = spec.parse_panels(args.panels)
        for run in loaded if axis else ():
            axis.value(run.config)  # numbers where it takes the largest of several keys
    except spec.SpecError as e:
        return _user_error(str(e))
    try:
        table = tabulate(loaded, args.group_by, args.metrics, args.baseline, baseline_given)
    except ValueError as e:  # a --baseline that picks no single configuration
        return _user_error(str(e))

    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return _user_error(f"--out {str(args.out)!r}: cannot create it ({e.strerror or e})")
    write_csv(args.out / "runs.csv", table.per_run)
    write_csv(args.out / "summary.csv", table.rows)
    drawn = draw_figures(args.out, table.groups, table.columns, step_metrics=args.step_metric,
                         axis=axis, lines=lines, panels=panels, grids=args.grids or [],
                         dirs=args.dirs)
    tell(drawn.skipped)
    report = Report(args.dirs, args.group_by, args.x, loaded, table, drawn.names, drawn.images,
                    read.skipped + drawn.skipped)
    write_markdown(args.out / "summary.md", report)
    if args.html:
        write_html(args.out / "report.html", report)
    print(f"genlab-report: {len(loaded)} runs, {len(table.groups)} configurations -> {args.out}")
    return 0


def tell(skipped: list[str]) -> None:
    """Name each unreadable file ("skipped: PATH: reason") on stderr; summary.md lists them too."""
    for line in skipped:
        print(line, file=sys.stderr)


def _user_error(message: str) -> int:
    print(f"genlab-report: error: {message}", file=sys.stderr)
    return 2


def unknown_argument(args: argparse.Namespace, loaded: list[Run]) -> str | None:
    """A --metrics, --x, --lines, --step-metric, --grids or --panels that no run has is a typo: say so rather than
    draw an empty column or no figure."""
    have = sorted({k for r in loaded for k in r.summary if "/" in k})
    grids = sorted({name for r in loaded for name in runs.grid_names(r.path)})
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
            return f"--{option} {key!r} is a key of no run's .hydra/config.yaml (e.g. model.objective.beta)"
    if args.step_metric:
        logged: set[str] = set()
        for r in loaded:
            with contextlib.suppress(OSError):
                logged.update(runs.metrics_header(r.path))
        for m in args.step_metric:
            if m not in logged:
                return (f"--step-metric {m!r} is in no run's metrics.csv; allowed: "
                        f"{', '.join(sorted(logged - {'step', 'epoch'})) or 'none (no metrics.csv)'}")
    return None


def apply_preset(args: argparse.Namespace, config: dict[str, Any]) -> None:
    """Arguments not given on the command line come from the study's preset: its `report:` block
    (group_by, metrics, x, lines, step_metric, grids, panels, baseline) in the runs' resolved
    config, then objective.metric. step_metric and baseline may be one value or a list; x, lines
    and panels are read by genlab.report.spec."""
    preset = config.get("report") or {}
    for key in ("group_by", "metrics", "x", "lines", "step_metric", "grids", "panels", "baseline"):
        if getattr(args, key) is None and preset.get(key):
            setattr(args, key, preset[key])
    if args.step_metric is None:
        args.step_metric = (config.get("objective") or {}).get("metric", "val/elbo")
    for key in ("step_metric", "baseline"):
        if isinstance(getattr(args, key), str):
            setattr(args, key, [getattr(args, key)])
