"""Validation of user-facing values: one clear error naming the key and what is allowed."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value is outside what genlab accepts; raised before any training starts."""


def require(ok: bool, key: str, allowed: str, got) -> None:
    """Raise ConfigError('key=got is invalid; allowed: ...') unless `ok`."""
    if not ok:
        raise ConfigError(f"{key}={got!r} is invalid; allowed: {allowed}")


def require_choice(value, key: str, choices) -> None:
    require(value in choices, key, " | ".join(map(str, choices)), value)


def require_positive(value, key: str, integer: bool = False) -> None:
    kind = "a positive integer" if integer else "a number > 0"
    ok = isinstance(value, int) if integer else isinstance(value, int | float)
    require(ok and not isinstance(value, bool) and value > 0, key, kind, value)


def require_nonnegative(value, key: str) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and value >= 0
    require(ok, key, "a number >= 0", value)
