"""genlab's one extension mechanism: a Registry per extension point, filled by its decorator.

    PRIORS = Registry("prior", "model.prior")

    @PRIORS.register("standard_normal")
    class StandardNormal(Prior): ...

Families, datasets, networks, priors, objectives, likelihoods, posteriors, discriminator games,
GAN losses, corruptions, optimizers and evaluators are all registered this way, and a config names
them by their registry name only: checkpoints and configs never carry an import path.

A *component* is a registered class with a `Settings` dataclass (genlab.settings). Its config node
is either its name alone (`model.d_mode=noise_head`: every setting at its default) or a mapping
`{name: noise_head, aux_weight_d: 2.0}`; `Registry.build` checks the name, the setting names and
each setting's value (one ConfigError line naming the key and what is allowed) and constructs
the component from its checked settings and whatever context its family passes (networks get the
image shape, a game gets D's scoring function and the corruption).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

from genlab.config import ConfigError, require_choice
from genlab.settings import Settings

T = TypeVar("T")


class Registry(Generic[T]):
    """name -> class (or object) for one extension point. `what` names the point in messages;
    `key` is the config key that chooses from it (for errors: "model.prior='x' is invalid")."""

    def __init__(self, what: str, key: str):
        self.what, self.key = what, key
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: register the decorated class (or function) under `name`; a class gets
        `registry_name`. A name registered twice is an error at import."""
        def add(entry: T) -> T:
            known = self._entries.get(name)
            if known is not None and known is not entry:
                # a module run as a script (python -m genlab.data.mnist) defines its classes twice,
                # once as __main__: the same class again keeps the entry there is
                if getattr(known, "__qualname__", None) != getattr(entry, "__qualname__", ""):
                    raise ValueError(f"{self.what} {name!r} is registered twice")
                return entry
            self._entries[name] = entry
            if isinstance(entry, type):
                entry.registry_name = name
            return entry
        return add

    def remove(self, name: str) -> None:
        """Take `name` out again (a test that registered an extension of its own)."""
        entry = self._entries.pop(name)
        if isinstance(entry, type) and entry.registry_name == name:
            entry.registry_name = ""

    def get(self, name, key: str | None = None) -> T:
        """The entry called `name`, or one ConfigError line: `key=name is invalid; allowed: ...`."""
        require_choice(name, key or self.key, list(self._entries))
        return self._entries[name]

    def name_of(self, entry) -> str:
        for name, registered in self._entries.items():
            if registered is entry:
                return name
        raise KeyError(f"{getattr(entry, '__qualname__', entry)!r} is not a registered {self.what} "
                       f"({', '.join(self._entries)})")

    def build(self, node, key: str | None = None, **context) -> Any:
        """A component from its config node (a name, a {name: ..., setting: value} mapping, or an
        already-built component, returned as it is), constructed as cls(settings, **context)."""
        key = key or self.key
        if isinstance(node, Component):
            return node
        cls = self.get(node_name(node, key), key if isinstance(node, str) else f"{key}.name")
        return cls(cls.Settings.from_node(node, key), **context)

    def __getitem__(self, name: str) -> T:
        return self._entries[name]

    def __contains__(self, name) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def items(self):
        return self._entries.items()

    def values(self):
        return self._entries.values()

    def __repr__(self) -> str:
        return f"Registry({self.what!r}: {', '.join(self._entries)})"


def node_name(node, key: str) -> str:
    """The registry name a component node gives: the string itself, or the mapping's `name`."""
    if isinstance(node, str):
        return node
    if isinstance(node, Mapping) and "name" in node:
        return node["name"]
    raise ConfigError(f"{key}={node!r} is invalid; allowed: a name, or a mapping with a 'name' key")


class Component:
    """A registered part of a model, built from a config node (Registry.build). `settings` is its
    checked Settings; `config()` gives the node back in full (name and every setting), the plain
    form a checkpoint stores and Registry.build rebuilds. A component that holds weights also
    derives from torch.nn.Module (after Component, so this __init__ runs Module's)."""

    registry_name: str = ""
    Settings = Settings  # a component without settings; a subclass names its own dataclass

    def __init__(self, settings=None, **context):
        super().__init__()
        self.settings = settings if settings is not None else type(self).Settings()

    def config(self) -> dict:
        return {"name": self.registry_name, **dataclasses.asdict(self.settings)}


__all__ = ["Component", "Registry", "node_name"]
