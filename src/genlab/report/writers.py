"""genlab-report's files: runs.csv and summary.csv (write_csv), summary.md (write_markdown) and
report.html (write_html), all written atomically (genlab.runs.atomic_write_text).

A column's numbers are rounded alike, to two significant digits of its finest interval
(508 ± 210, 0.437 ± 0.011): column_decimals and cell. report.html is one self-contained page:
its style and its sorting script are report.css and report.js, files of this package, and its
figures and sample grids are inlined as data URIs.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
import shlex
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from genlab import runs
from genlab.report.figures import compact_png, slug
from genlab.report.groups import NOT_CONFIGURATION, Table, label
from genlab.report.load import Run
from genlab.stats import BASELINE_TEXT, comparison_cell


@dataclass
class Report:
    """What summary.md and report.html show: the folders read (dirs) and how the runs were
    grouped (group_by, None: by config), whether a metric-against-value figure was asked for (x),
    the runs read (loaded), the table, the figures' names in OUTDIR, the generated grid of each
    run that has a readable one (images: run path -> image) and a "skipped: PATH: reason" line
    per file that could not be read."""
    dirs: list[str]
    group_by: list[str] | None
    x: Any
    loaded: list[Run]
    table: Table
    figures: list[str]
    images: dict[Path, Any]
    skipped: list[str]


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


def intro(dirs: list[str], group_by: list[str] | None, loaded: list[Run]) -> list[str]:
    """The report's opening paragraphs: what was read (the runs, from `dirs`) and how to read
    the table (grouped by `group_by`, or by config)."""
    counts = ", ".join(f"{s} {sum(r.status == s for r in loaded)}" for s in runs.STATUSES)
    live = sum(r.trained_by is not None for r in loaded)
    if live:
        counts += f"; {live} of the running being trained now"
    grouping = (f"the values of {', '.join(group_by)}" if group_by
                else "a distinct saved config (apart from " + ", ".join(NOT_CONFIGURATION)
                + "), labelled by its overrides")
    return [
        f"Runs read: {len(loaded)} ({counts}) from {', '.join(dirs)}.",
        f"A configuration (a row) is {grouping}. Each cell is mean ± standard deviation (n-1) "
        "over the ok seeds, with the number of seeds in brackets, computed from runs.csv (every "
        "run's seed, status and values). Runs that did not end ok are "
        "counted in their own columns and never averaged. FID-like metrics carry the feature "
        "extractor in the column name; different extractors are never mixed. Validation values "
        "(val/...) are those of each run's best checkpoint; the step curves show the per-epoch "
        "values, with the best checkpoints' value as a separate star.",
    ]


def write_markdown(path: Path, report: Report) -> None:
    """summary.md: the intro, the table (and with a baseline, the differences from it), the
    notes, the figures, the runs not averaged and the files skipped."""
    rows, columns, base = report.table.rows, report.table.columns, report.table.base
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    decimals = {col: column_decimals(rows, col) for col in columns}
    lines = [
        "# genlab report", "", *[line for p in intro(report.dirs, report.group_by, report.loaded) for line in (p, "")],
        "| configuration | " + " | ".join([*runs.STATUSES, *map(esc, columns)]) + " |",
        "|---" * (1 + len(runs.STATUSES) + len(columns)) + "|",
    ]
    for row in rows:
        cells = [esc(row["configuration"])] + [str(row[f"n_{s}"]) for s in runs.STATUSES]
        cells += [cell(row, col, decimals[col]) for col in columns]
        lines.append("| " + " | ".join(cells) + " |")
    if report.table.notes:
        lines += ["", *[f"- {n}" for n in report.table.notes]]
    if base is not None:
        lines += ["", f"## Differences from the baseline: {esc(base['configuration'])}", "",
                  BASELINE_TEXT, "",
                  "| configuration | " + " | ".join(map(esc, columns)) + " |",
                  "|---" * (1 + len(columns)) + "|"]
        for row in rows:
            cells = ["baseline" if row is base else comparison_cell(row, col) for col in columns]
            lines.append("| " + " | ".join([esc(row["configuration"]), *cells]) + " |")

    lines += ["", "## Figures", ""]
    for name in report.figures:
        lines += [f"![{name}]({name}.png) ([pdf]({name}.pdf))", ""]
    if not report.x:
        lines += ["Pass `--x KEY` for a metric-against-value figure.", ""]

    not_ok = [r for r in report.loaded if r.status != "ok"]
    if not_ok:
        lines += ["", "## Runs not averaged", ""]
        lines += [f"- {r.path}: {r.status_text} (seed {r.seed})" for r in not_ok]
    if report.skipped:
        lines += ["", "## Skipped", ""]
        lines += [f"- {s}" for s in report.skipped]
    runs.atomic_write_text(path, "\n".join(lines) + "\n")




@cache
def asset(name: str) -> str:
    """A file shipped in this package (report.css, report.js)."""
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def data_uri(png: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(compact_png(png.read_bytes())).decode("ascii")


def command(run: Run) -> str:
    """The command line that repeats the run: its overrides (Hydra's own settings left out)."""
    kept = [o for o in run.overrides if o.partition("=")[0].lstrip("+~").split(".", 1)[0] != "hydra"]
    return shlex.join(["genlab-train", *kept])


def write_html(path: Path, report: Report) -> None:
    """One self-contained page (figures and sample grids inlined as data URIs, no network): the
    summary table (and with a baseline, the differences from it), sortable by clicking a header;
    the figures; and per configuration its runs (seed, status, values, folder, command) and their
    generated samples. The page's style and script are report.css and report.js (asset)."""
    e = html.escape
    rows, columns, base = report.table.rows, report.table.columns, report.table.base
    decimals = {col: column_decimals(rows, col) for col in columns}
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           "<title>genlab report</title>", f"<style>\n{asset('report.css')}</style></head><body>",
           "<h1>genlab report</h1>", *[f"<p>{e(p)}</p>" for p in intro(report.dirs, report.group_by, report.loaded)]]

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
    if report.table.notes:
        out += ["<ul>", *[f"<li>{e(n)}</li>" for n in report.table.notes], "</ul>"]
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
    for name in report.figures:
        out.append(f'<figure class="figure"><img src="{data_uri(path.parent / f"{name}.png")}" '
                   f'alt="{e(name)}"><figcaption>{e(name)}</figcaption></figure>')

    out.append("<h2>Configurations</h2>")
    for ident, members in report.table.groups.items():
        name = label(ident)
        out += [f'<section class="configuration" id="{slug(name)}"><h3>{e(name)}</h3>',
                '<div class="scroll"><table><tr><th>seed</th><th>status</th>', *[f"<th>{e(c)}</th>" for c in columns],
                "<th>run folder</th><th>command</th></tr>"]
        for r in members:  # each run's own values (runs.csv), beside its folder and command
            out += [f"<tr><td>{e(str(r.seed))}</td><td>{e(r.status)}</td>",
                    *[f"<td>{fmt(r.values.get(c), decimals[c])}</td>" for c in columns],
                    f"<td><code>{e(str(r.path))}</code></td><td><code>{e(command(r))}</code></td></tr>"]
        out.append("</table></div>")
        grids = [r for r in members if r.path in report.images]
        out += [f'<figure class="grid"><img src="{data_uri(runs.final_grid(r.path))}" '
                f'alt="generated samples, seed {e(str(r.seed))}"><figcaption>generated samples, '
                f"seed {e(str(r.seed))}</figcaption></figure>" for r in grids]
        if not grids:
            out.append("<p>No generated samples (samples/generated_final.png) in an ok run.</p>")
        out.append("</section>")

    if report.skipped:
        out += ["<h2>Skipped</h2><ul>", *[f"<li>{e(s)}</li>" for s in report.skipped], "</ul>"]
    out += [f"<script>\n{asset('report.js')}</script>", "</body></html>"]
    runs.atomic_write_text(path, "\n".join(out) + "\n")


