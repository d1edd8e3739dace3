"""genlab-report's figures, each saved as OUTDIR/<name>.png and .pdf (at DPI; the PNG
losslessly recompressed, compact_png):

- curve_<metric>: each step metric against the training step, one line per configuration
  (the per-epoch mean ± 1 std over its ok seeds, from each run's metrics.csv), and the final
  validation of the best checkpoints (summary.json) as a star apart from the line;
- <column>_vs_<axis label>: each metric column against --x (a config key, or a value derived from
  the config: genlab.report.spec), with one line per --lines value under the study's names for
  them, or one per setting of the grouping keys not on the x axis;
- samples, and <grid> for every --grids name: one grid (samples/<name>_final.png) of the first ok
  seed of each configuration, drawn one image pixel to one pixel of the PNG;
- panels: with --panels, several grids of one seed per configuration side by side;
- search_history_<study>, search_importances_<study>: an Optuna search's own plots.

Run files (metrics.csv, the sample grids) are read through genlab.runs; one that cannot be read
is skipped, and its "skipped: PATH: reason" line returned with what was drawn.
"""

from __future__ import annotations

import csv
import io
import math
import re
import statistics
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from genlab import runs
from genlab.report.groups import Groups, label, mean_std, natural
from genlab.report.load import MISSING, as_text, skipped, summary_values
from genlab.report.spec import Axis, Lines, is_number

DPI = 150  # every figure's PNG and PDF
LOG_SPAN = 100  # a curve figure whose values span more than this factor gets a log y axis
MIN_PX = 160  # the least width of a grid in the panels figure, in pixels of the saved PNG



# --- saving ------------------------------------------------------------------------------------

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


@dataclass
class Curves:
    """curve_series' lines, and a "skipped: PATH: reason" line per metrics.csv it could not read."""
    series: list[Curve]
    skipped: list[str] = field(default_factory=list)


def curve_series(groups: Groups, metric: str) -> Curves:
    """Each configuration's Curve of `metric` from its ok runs' metrics.csv (genlab.runs.read_curve,
    the trained epochs only); a configuration none of whose runs logged the metric has none."""
    out = Curves([])
    for ident, members in groups.items():
        curves, best = [], []
        for run in (r for r in members if r.status == "ok"):
            path = run.path / runs.METRICS
            if not path.is_file():
                continue  # not every run logs to CSV; the legend's n shows how many did
            epochs = run.summary.get("epochs")
            try:
                curve = runs.read_curve(run.path, metric, epochs if isinstance(epochs, int) else None)
            except (OSError, UnicodeDecodeError, csv.Error, ValueError, TypeError) as e:
                out.skipped.append(skipped(f"{path}: malformed ({e})"))
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
        out.series.append(Curve(label(ident), steps, [statistics.fmean(y) for y in ys],
                                [statistics.stdev(y) for y in ys] if len(curves) > 1 else None,
                                len(curves), best_mean, best_std))
    return out


def curve_figure(series: list[Curve], metric: str) -> Figure:
    """Each configuration's per-epoch line (± 1 std band) and, as an unconnected star at the
    right end, the mean of its best checkpoints' final validation."""
    names = [wrap(c.label) for c in series]  # a long label would squash the axes
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


@dataclass
class Grids:
    """final_grids' images (run path -> image array), and a "skipped: PATH: reason" line per
    grid it could not read."""
    images: dict[Path, Any]
    skipped: list[str] = field(default_factory=list)


def final_grids(groups: Groups, name: str = runs.GENERATED) -> Grids:
    """run path -> its grid `name` (samples/<name>_final.png; by default the generated samples)
    as an image array, for every ok run that has a readable one. Other grids (reconstructions,
    degraded real images, chains) are never taken for generated samples."""
    out = Grids({})
    for members in groups.values():
        for run in (r for r in members if r.status == "ok"):
            path = runs.final_grid(run.path, name)
            if not path.is_file():
                continue
            try:
                out.images[run.path] = runs.read_grid(run.path, name)
            except Exception as e:  # Pillow raises several types for a broken PNG
                out.skipped.append(skipped(f"{path}: unreadable image ({type(e).__name__}: {e})"))
    return out


def plot_samples(out: Path, groups: Groups, images: dict[Path, Any],
                 grid: str = runs.GENERATED) -> str | None:
    """samples.png|pdf for the generated samples, <grid>.png|pdf for another grid."""
    fig = samples_figure(groups, images, grid)
    return save(fig, out, "samples" if grid == runs.GENERATED else grid) if fig else None


def samples_figure(groups: Groups, images: dict[Path, Any],
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


def wrap(text: str, width: int = 40) -> str:
    """A legend label in lines of at most `width` characters, broken after commas."""
    return "\n".join(textwrap.wrap(text, width, break_on_hyphens=False)) or text


# --- a metric against an axis, one line per arm --------------------------------------------------

def against_points(groups: Groups, axis: Axis, column: str,
                   lines: Lines | None) -> dict[str, dict[Any, list[float]]]:
    """line name -> x value -> the ok runs' values of column; lines in the order `lines.names`
    gives them (then the others), or by their grouping keys."""
    points: dict[str, dict[Any, list[float]]] = {}
    order: dict[str, tuple] = {}
    for ident, members in groups.items():
        others = tuple(p for p in ident if p[0] not in axis.keys)
        for run in members:
            if run.status != "ok" or column not in run.values:
                continue
            x = axis.value(run.config)
            if x is MISSING:
                continue
            for name in lines.of(run.config) if lines else (label(others),):
                points.setdefault(name, {}).setdefault(x, []).append(run.values[column])
                order.setdefault(name, natural(others))
    if lines:
        named = list(dict.fromkeys(n for these in lines.names.values() for n in these))
        rank = {n: (0, i, ()) for i, n in enumerate(named)}
        return dict(sorted(points.items(), key=lambda item: rank.get(item[0], (1, 0, order[item[0]]))))
    return dict(sorted(points.items(), key=lambda item: order[item[0]]))


def against_figure(points: dict[str, dict[Any, list[float]]], axis: Axis, column: str) -> Figure:
    """Each line's mean over seeds at each x, with error bars of one standard deviation."""
    xs = {v for per_x in points.values() for v in per_x}
    numeric = all(is_number(v) for v in xs)
    # Categorical values (a corruption kind, a model name) sit at evenly spaced ticks.
    position = ({v: v for v in xs} if numeric
                else {v: i for i, v in enumerate(sorted(xs, key=as_text))})
    fig = Figure(figsize=(6, 4.2), layout="constrained")
    ax = fig.add_subplot()
    for name, per_x in points.items():
        keys = sorted(per_x, key=lambda v: position[v])
        stats = [mean_std(per_x[k]) for k in keys]
        n = sorted({len(per_x[k]) for k in keys})
        seeds = f"{n[0]}" if len(n) == 1 else f"{n[0]}-{n[-1]}"
        ax.errorbar([position[k] for k in keys], [m if m is not None else math.nan for m, _ in stats],
                    yerr=[s if s is not None else math.nan for _, s in stats],
                    marker="o", capsize=3, label=f"{wrap(name)} (n={seeds})")
    if not numeric:
        ax.set_xticks(list(position.values()), [as_text(v) for v in position])
        ax.set_xlim(-0.5, len(position) - 0.5)
    elif axis.log and min(xs) > 0:
        ax.set_xscale("log")
        ax.set_xticks(sorted(xs), [f"{v:g}" for v in sorted(xs)])
        ax.minorticks_off()
    ax.set(xlabel=axis.label + (" (log scale)" if ax.get_xscale() == "log" else ""), ylabel=column,
           title="\n".join(textwrap.wrap(f"{column} against {axis.label} (mean ± 1 std over seeds)",
                                         60)))
    ax.grid(alpha=0.3)
    if len(points) > 1 or points.keys() != {"(defaults)"}:
        ax.legend(fontsize="small")
    return fig


def plot_against(out: Path, groups: Groups, axis: Axis, column: str,
                 lines: Lines | None = None) -> str | None:
    """<column>_vs_<axis label>.png|pdf, or None where no ok run has the column."""
    points = against_points(groups, axis, column, lines)
    if not points:
        return None
    return save(against_figure(points, axis, column), out,
                    f"{slug(column)}_vs_{slug(axis.label)}")


# --- named grids side by side --------------------------------------------------------------------

def panel_rows(groups: Groups, grids: dict[str, dict[Path, Any]]
               ) -> list[tuple[str, list[Any]]]:
    """Per configuration, (its label and seed, one image or None per grid) of one seed: the first
    ok seed with the most of the grids readable."""
    rows = []
    for ident, members in groups.items():
        ok = [r for r in members if r.status == "ok"]
        if not ok:
            continue
        run = max(ok, key=lambda r: sum(r.path in images for images in grids.values()))  # first of the best
        shown = [images.get(run.path) for images in grids.values()]
        if any(image is not None for image in shown):
            rows.append((f"{label(ident)}\nseed {run.seed}", shown))
    return rows


def panels_figure(rows: list[tuple[str, list[Any]]], titles: list[str]) -> Figure:
    """A table of grids: a row per configuration (its label on the left), a column per grid (its
    title on top). Each grid is drawn at a whole multiple of its size (small grids, such as the 8x8
    digits', enlarged to at least MIN_PX wide), so every image pixel is a square block of pixels
    of the saved PNG."""
    pad, text_px = 12, math.ceil(7 * 1.3 * DPI / 72)  # a 7-point line of text, in pixels
    zoom, widths = [], []
    for j in range(len(titles)):
        w = max((shown[j].shape[1] for _, shown in rows if shown[j] is not None), default=MIN_PX)
        zoom.append(max(1, MIN_PX // w))
        widths.append(max(w * zoom[j], MIN_PX))
    heights = [max([text_px, *(image.shape[0] * zoom[j] for j, image in enumerate(shown)
                               if image is not None)]) for _, shown in rows]
    wrapped = ["\n".join(textwrap.wrap(t, max(8, w // 9))) for t, w in zip(titles, widths, strict=True)]
    labels = ["\n".join(w for line in name.split("\n") for w in textwrap.wrap(line, 24) or [""])
              for name, _ in rows]
    heights = [max(h, (n.count("\n") + 1) * text_px) + pad for h, n in zip(heights, labels, strict=True)]
    head = max(t.count("\n") + 1 for t in wrapped) * text_px + 2 * pad
    side = 24 * 9 + pad  # room for a 24-character label line
    lefts = [side + sum(widths[:j]) + j * pad for j in range(len(titles))]
    W, H = lefts[-1] + widths[-1] + pad, head + sum(heights)
    fig = Figure(figsize=(W / DPI, H / DPI))
    for title, left, w in zip(wrapped, lefts, widths, strict=True):
        fig.text((left + w / 2) / W, 1 - pad / H, title, ha="center", va="top", fontsize=7,
                 fontweight="bold")
    top = head
    for name, (_, shown), height in zip(labels, rows, heights, strict=True):
        fig.text(pad / W, 1 - (top + height / 2) / H, name, ha="left", va="center", fontsize=7)
        for image, left, w, z in zip(shown, lefts, widths, zoom, strict=True):
            if image is None:
                fig.text((left + w / 2) / W, 1 - (top + height / 2) / H, "(no grid)",
                         ha="center", va="center", fontsize=7, color="grey")
                continue
            h, iw = image.shape[0] * z, image.shape[1] * z
            ax = fig.add_axes(((left + (w - iw) // 2) / W, 1 - (top + h) / H, iw / W, h / H))
            ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest", aspect="auto")
            ax.axis("off")
        top += height
    return fig


# --- every figure of a report -------------------------------------------------------------------

@dataclass
class Drawn:
    """What draw_figures saved: the figures' names (OUTDIR/<name>.png and .pdf) in the report's
    order, the generated grids it read (run path -> image; report.html shows them per
    configuration), and a "skipped: PATH: reason" line per run file it could not read."""
    names: list[str]
    images: dict[Path, Any]
    skipped: list[str]


def draw_figures(out: Path, groups: Groups, columns: list[str], *, step_metrics: list[str],
                 axis: Axis | None = None, lines: Lines | None = None,
                 panels: dict[str, str] | None = None, grids: list[str] = (),
                 dirs: list[str] = ()) -> Drawn:
    """Every figure of the report, in its order: the curve of each step metric; with an axis,
    each metric column against it; the generated samples; with panels, the panels; a figure per
    named grid; and the figures of each Optuna search among `dirs`. A figure with nothing to show
    is left out."""
    names: list[str | None] = []
    lost: list[str] = []
    for metric in step_metrics:
        curves = curve_series(groups, metric)
        lost += curves.skipped
        names.append(save(curve_figure(curves.series, metric), out, f"curve_{slug(metric)}")
                     if curves.series else None)
    if axis:
        names += [plot_against(out, groups, axis, col, lines) for col in columns]
    generated = final_grids(groups)
    lost += generated.skipped
    names.append(plot_samples(out, groups, generated.images))
    if panels:
        shown = {name: final_grids(groups, name) for name in panels}
        lost += [line for grid in shown.values() for line in grid.skipped]
        rows = panel_rows(groups, {name: grid.images for name, grid in shown.items()})
        names.append(save(panels_figure(rows, list(panels.values())), out, "panels") if rows else None)
    for grid in grids:
        other = final_grids(groups, grid)
        lost += other.skipped
        names.append(plot_samples(out, groups, other.images, grid))
    names += search_figures(out, dirs)
    return Drawn([n for n in names if n], generated.images, lost)
