"""genlab-report's figure settings: what a study preset's `report:` block (or --x, --lines and
--panels) says the figures show (genlab.report.cli.apply_preset reads the block):

    report:
      x: {max: [model.objective.k], label: k, log: true}  # or {key: model.objective.beta, label: beta}
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
configuration, the grids of one seed side by side (panels.png). genlab.report.figures draws them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from genlab.report.load import MISSING, as_text, lookup

X_KEYS = ("key", "max", "label", "log")
LINES_KEYS = ("by", "names")


class SpecError(ValueError):
    """A report block that cannot be used; the message is one line naming the key."""


@dataclass(frozen=True)
class Axis:
    keys: tuple[str, ...]  # one key: its value; several: the largest of their values
    label: str
    log: bool = False

    def value(self, config: dict[str, Any]) -> Any:
        values = [lookup(config, k) for k in self.keys]
        if len(values) == 1 or any(v is MISSING for v in values):
            return values[0] if len(values) == 1 else MISSING
        if not all(is_number(v) for v in values):
            raise SpecError(f"report.x.max: {', '.join(self.keys)} must be numbers, got "
                            f"{', '.join(map(as_text, values))}")
        return max(values)


def is_number(v: Any) -> bool:
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
        value = as_text(lookup(config, self.by))
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
        parsed[as_text(value)] = these
    return Lines(spec["by"], parsed)


def parse_panels(spec: Any) -> dict[str, str] | None:
    if spec is None:
        return None
    if isinstance(spec, list | tuple):
        spec = {name: name.replace("_", " ") for name in spec}
    if not isinstance(spec, dict) or not spec or not all(isinstance(k, str) for k in spec):
        raise SpecError(f"report.panels: expected a mapping grid name -> column title, got {spec!r}")
    return {name: str(title) for name, title in spec.items()}
