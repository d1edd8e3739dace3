"""Typed settings that check themselves: the dataclass behind every component and family.

    @dataclasses.dataclass
    class IWAESettings(Settings):
        k: int = positive_int(5)

Each field declares its default and, through these helpers, the rule its value must meet; the
rule's ConfigError names the full key (`model.objective.k=0 is invalid; allowed: a positive
integer`). `Settings.from_node` makes settings from a config node (a name alone: the defaults; a
mapping: its keys, any other key refused with the allowed ones) and checks every field once, then
`validate` for rules across fields. Nothing else in genlab checks a component's settings again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

from omegaconf import OmegaConf

from genlab.config import (
    ConfigError,
    require,
    require_choice,
    require_nonnegative,
    require_positive,
)

Rule = Callable[[object, str], None]


def setting(default=dataclasses.MISSING, rule: Rule | None = None, factory=dataclasses.MISSING):
    """A field with a default (or a factory for a list) and the rule its value must meet."""
    return dataclasses.field(default=default, default_factory=factory, metadata={"rule": rule})


def positive_int(default) -> dataclasses.Field:
    return setting(default, lambda v, k: require_positive(v, k, integer=True))


def positive(default) -> dataclasses.Field:
    return setting(default, require_positive)


def nonnegative(default) -> dataclasses.Field:
    return setting(default, require_nonnegative)


def nonnegative_int(default) -> dataclasses.Field:
    return setting(default, lambda v, k: require(isinstance(v, int) and not isinstance(v, bool) and v >= 0,
                                                 k, "an integer >= 0", v))


def choice(default, choices: Sequence) -> dataclasses.Field:
    return setting(default, lambda v, k: require_choice(v, k, choices))


def flag(default: bool) -> dataclasses.Field:
    return setting(default, lambda v, k: require(isinstance(v, bool), k, "true | false", v))


def fraction(default, closed_low: bool = False) -> dataclasses.Field:
    """A number in (0, 1] (or [0, 1] with closed_low)."""
    def rule(v, k):
        ok = isinstance(v, int | float) and not isinstance(v, bool)
        require(ok and (0 <= v if closed_low else 0 < v) and v <= 1, k,
                f"a number in {'[' if closed_low else '('}0, 1]", v)
    return setting(default, rule)


def plain(value):
    """OmegaConf containers -> plain dicts and lists (what a checkpoint and a dataclass hold)."""
    if OmegaConf.is_config(value):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return list(value)
    return value


@dataclasses.dataclass
class Settings:
    """Base of every settings dataclass (no fields: a component without settings)."""

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_node(cls, node, key: str, skip: Sequence[str] = ("name",)):
        """Checked settings from a config node: a name alone (every default) or a mapping whose
        keys are fields of this class (`skip`: keys that are not settings, e.g. the name)."""
        values = {} if isinstance(node, str) else {k: v for k, v in plain(node).items() if k not in skip}
        allowed = cls.names()
        for k in values:
            if k not in allowed:
                whose = f" of {node['name']}" if isinstance(node, Mapping) and "name" in node else ""
                raise ConfigError(f"{key}.{k} is not a setting{whose}; allowed: {', '.join(allowed) or 'none'}")
        settings = cls(**values)
        settings.check(key)
        return settings

    def check(self, key: str) -> None:
        """Every field's rule, then `validate`."""
        for f in dataclasses.fields(self):
            rule = f.metadata.get("rule")
            if rule is not None:
                rule(getattr(self, f.name), f"{key}.{f.name}")
        self.validate(key)

    def validate(self, key: str) -> None:
        """Rules across fields; override in a subclass."""


__all__ = ["Settings", "choice", "flag", "fraction", "nonnegative", "nonnegative_int", "plain",
           "positive", "positive_int", "setting"]
