"""Validation of user-facing values: one clear error naming the key and what is allowed."""

from __future__ import annotations

import argparse


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


def one_line(error: BaseException) -> str:
    """An error as the single line a command prints for a user error: Hydra's and genlab's
    multi-line messages (an option list, a hint on the next line) are joined, indented items by
    commas, so a script or a sweep log sees the whole reason on one line."""
    text = str(error).strip() or type(error).__name__
    out: list[str] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        if out and out[-1].endswith(":"):  # "Available options:" then its items
            out[-1] += " " + line.strip()
        elif line[:1].isspace() and out:
            out[-1] += ", " + line.strip()
        else:
            out.append(line.strip())
    return "; ".join(out)


class ArgumentParser(argparse.ArgumentParser):
    """argparse for genlab's commands: a bad argument is one line on stderr and exit code 2
    (argparse's own error prints its usage block first)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")
