"""genlab-report's study figures: a metric against a derived axis with one line per named arm,
and a side-by-side figure of several named sample grids per configuration.

A study preset's `report:` block says what they show (genlab.report.apply_preset):

    report:
      x: {max: [model.iwae_k, model.elbo_k], label: k, log: true}  # or {key: model.beta, label: beta}
      lines: {by: arm, names: {vae: [VAE, IWAE], vae_k5: VAE, iwae_k5: IWAE}}
      panels: {generated: prior samples, expost: ex-post mixture samples}

`x` is one dotted config key (as --x) or a mapping: `key` (one dotted key) or `max` (several,
the largest of their values: the k of whichever bound a run trains), `label` (the axis label and
the figures' file names; default the key) and `log` (a log-scaled axis). `lines.by` is a dotted
config key whose value picks a run's line; `names` gives each value the line's name in the
study's words, or a list of names where one run is a point of several lines (the k = 1 run, where
the VAE's and the IWAE's bounds coincide); a value it does not name is a line labelled KEY=VALUE.
Without `lines`, one line per setting of the grouping keys that are not on the x axis.
`panels` maps grid names (samples/<name>_final.png) to their column titles: one row per
configuration, the grids of one seed side by side (panels.png).
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from genlab import report as rep

X_KEYS = ("key", "max", "label", "log")
MIN_PX = 160  # the least width of a grid in the panels figure, in pixels of the saved PNG
LINES_KEYS = ("by", "names")


class SpecError(ValueError):
    """A report block that cannot be used; the message is one line naming the key."""


@dataclass(frozen=True)
class Axis:
    keys: tuple[str, ...]  # one key: its value; several: the largest of their values
    label: str
    log: bool = False

    def value(self, config: dict[str, Any]) -> Any:
        values = [rep.lookup(config, k) for k in self.keys]
        if len(values) == 1 or any(v is rep.MISSING for v in values):
            return values[0] if len(values) == 1 else rep.MISSING
        if not all(_number(v) for v in values):
            raise SpecError(f"report.x.max: {', '.join(self.keys)} must be numbers, got "
                            f"{', '.join(map(rep.as_text, values))}")
        return max(values)


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def parse_axis(spec: Any) -> Axis:
    """--x KEY or a preset's report.x (a key, or a mapping: see the module docstring)."""
    if isinstance(spec, str):
        return Axis((spec,), spec)
    if not isinstance(spec, dict):
        raise SpecError(f"report.x: expected a dotted config key or a mapping with keys "
                        f"{', '.join(X_KEYS)}, got {spec!r}")
    unknown = sorted(set(spec) - set(X_KEYS))
    if unknown:
        raise SpecError(f"report.x: unknown key {unknown[0]!r}; allowed: {', '.join(X_KEYS)}")
    if ("key" in spec) == ("max" in spec):
        raise SpecError("report.x: give exactly one of key (a dotted config key) or max (a list "
                        "of them)")
    if "key" in spec:
        if not isinstance(spec["key"], str) or not spec["key"]:
            raise SpecError(f"report.x.key: expected a dotted config key, got {spec['key']!r}")
        keys: tuple[str, ...] = (spec["key"],)
    else:
        keys = tuple(spec["max"]) if isinstance(spec["max"], list | tuple) else ()
        if len(keys) < 2 or not all(isinstance(k, str) and k for k in keys):
            raise SpecError(f"report.x.max: expected a list of two or more dotted config keys, "
                            f"got {spec['max']!r}")
    name = spec.get("label") or (keys[0] if len(keys) == 1 else f"max({', '.join(keys)})")
    if not isinstance(spec.get("log", False), bool):
        raise SpecError(f"report.x.log: expected true or false, got {spec['log']!r}")
    return Axis(keys, str(name), spec.get("log", False))


@dataclass(frozen=True)
class Lines:
    by: str
    names: dict[str, tuple[str, ...]]  # value of `by` (as text) -> the lines its runs belong to

    def of(self, config: dict[str, Any]) -> tuple[str, ...]:
        value = rep.as_text(rep.lookup(config, self.by))
        return self.names.get(value) or (f"{self.by}={value}",)


def parse_lines(spec: Any) -> Lines | None:
    if spec is None:
        return None
    if not isinstance(spec, dict) or not isinstance(spec.get("by"), str):
        raise SpecError(f"report.lines: expected a mapping with by (a dotted config key) and "
                        f"names (value -> line name), got {spec!r}")
    unknown = sorted(set(spec) - set(LINES_KEYS))
    if unknown:
        raise SpecError(f"report.lines: unknown key {unknown[0]!r}; allowed: {', '.join(LINES_KEYS)}")
    names = spec.get("names") or {}
    if not isinstance(names, dict):
        raise SpecError(f"report.lines.names: expected a mapping value -> line name, got {names!r}")
    parsed = {}
    for value, name in names.items():
        these = tuple(name) if isinstance(name, list | tuple) else (name,)
        if not these or not all(isinstance(n, str) and n for n in these):
            raise SpecError(f"report.lines.names.{value}: expected a line name or a list of them, "
                            f"got {name!r}")
        parsed[rep.as_text(value)] = these
    return Lines(spec["by"], parsed)


def parse_panels(spec: Any) -> dict[str, str] | None:
    if spec is None:
        return None
    if isinstance(spec, list | tuple):
        spec = {name: name.replace("_", " ") for name in spec}
    if not isinstance(spec, dict) or not spec or not all(isinstance(k, str) for k in spec):
        raise SpecError(f"report.panels: expected a mapping grid name -> column title, got {spec!r}")
    return {name: str(title) for name, title in spec.items()}


def wrap(text: str, width: int = 40) -> str:
    """A legend label in lines of at most `width` characters, broken after commas."""
    return "\n".join(textwrap.wrap(text, width, break_on_hyphens=False)) or text


# --- a metric against an axis, one line per arm --------------------------------------------------

def against_points(groups: dict[rep.Identity, list[rep.Run]], axis: Axis, column: str,
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
            if x is rep.MISSING:
                continue
            for name in lines.of(run.config) if lines else (rep.label(others),):
                points.setdefault(name, {}).setdefault(x, []).append(run.values[column])
                order.setdefault(name, rep._natural(others))
    if lines:
        named = list(dict.fromkeys(n for these in lines.names.values() for n in these))
        rank = {n: (0, i, ()) for i, n in enumerate(named)}
        return dict(sorted(points.items(), key=lambda item: rank.get(item[0], (1, 0, order[item[0]]))))
    return dict(sorted(points.items(), key=lambda item: order[item[0]]))


def against_figure(points: dict[str, dict[Any, list[float]]], axis: Axis, column: str) -> Figure:
    """Each line's mean over seeds at each x, with error bars of one standard deviation."""
    xs = {v for per_x in points.values() for v in per_x}
    numeric = all(_number(v) for v in xs)
    # Categorical values (a corruption kind, a model name) sit at evenly spaced ticks.
    position = ({v: v for v in xs} if numeric
                else {v: i for i, v in enumerate(sorted(xs, key=rep.as_text))})
    fig = Figure(figsize=(6, 4.2), layout="constrained")
    ax = fig.add_subplot()
    for name, per_x in points.items():
        keys = sorted(per_x, key=lambda v: position[v])
        stats = [rep.mean_std(per_x[k]) for k in keys]
        n = sorted({len(per_x[k]) for k in keys})
        seeds = f"{n[0]}" if len(n) == 1 else f"{n[0]}-{n[-1]}"
        ax.errorbar([position[k] for k in keys], [m for m, _ in stats],
                    yerr=[s if s is not None else math.nan for _, s in stats],
                    marker="o", capsize=3, label=f"{wrap(name)} (n={seeds})")
    if not numeric:
        ax.set_xticks(list(position.values()), [rep.as_text(v) for v in position])
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


def plot_against(out: Path, groups: dict[rep.Identity, list[rep.Run]], axis: Axis, column: str,
                 lines: Lines | None = None) -> str | None:
    """<column>_vs_<axis label>.png|pdf, or None where no ok run has the column."""
    points = against_points(groups, axis, column, lines)
    if not points:
        return None
    return rep.save(against_figure(points, axis, column), out,
                    f"{rep.slug(column)}_vs_{rep.slug(axis.label)}")


# --- named grids side by side --------------------------------------------------------------------

def panel_rows(groups: dict[rep.Identity, list[rep.Run]], grids: dict[str, dict[Path, Any]]
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
            rows.append((f"{rep.label(ident)}\nseed {run.seed}", shown))
    return rows


def panels_figure(rows: list[tuple[str, list[Any]]], titles: list[str]) -> Figure:
    """A table of grids: a row per configuration (its label on the left), a column per grid (its
    title on top). Each grid is drawn at a whole multiple of its size (small grids, such as the 8x8
    digits', enlarged to at least MIN_PX wide), so every image pixel is a square block of pixels
    of the saved PNG."""
    pad, text_px = 12, math.ceil(7 * 1.3 * rep.DPI / 72)  # a 7-point line of text, in pixels
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
    fig = Figure(figsize=(W / rep.DPI, H / rep.DPI))
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


def plot_panels(out: Path, groups: dict[rep.Identity, list[rep.Run]], panels: dict[str, str],
                skipped: list[str]) -> str | None:
    """panels.png|pdf: the named grids of one seed per configuration, side by side."""
    grids = {name: rep.final_grids(groups, skipped, name) for name in panels}
    rows = panel_rows(groups, grids)
    return rep.save(panels_figure(rows, list(panels.values())), out, "panels") if rows else None
