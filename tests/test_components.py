"""The component config files agree with the components: every conf/model/<slot>/<name>.yaml
names a registered component of that slot and lists exactly its settings at their defaults, so
what a user reads in conf/ is what the code does; and every registry is one genlab.registry.Registry."""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import genlab
from genlab.registry import Registry

CONF = Path(__file__).resolve().parents[1] / "conf"


def _registries() -> list[Registry]:
    """Every module-level Registry of genlab's modules (all imported)."""
    for info in pkgutil.walk_packages(genlab.__path__, "genlab."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)
    found = {id(v): v for name, m in list(sys.modules.items()) if name.startswith("genlab")
             for v in vars(m).values() if isinstance(v, Registry)}
    return list(found.values())


REGISTRIES = _registries()
FILES = sorted(p for p in (CONF / "model").glob("*/*.yaml"))


def test_the_registries_are_found():
    keys = {r.key for r in REGISTRIES}
    assert {"model.family", "model.net", "model.likelihood", "model.posterior", "model.prior",
            "model.objective", "model.d_mode", "model.loss", "data.name", "corruption.kind",
            "metrics"} <= keys, keys


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_a_component_file_lists_its_settings_at_their_defaults(path):
    slot = path.parent.name
    node = OmegaConf.to_container(OmegaConf.load(path))
    assert node.get("name") == path.stem, f"{path}: name must be the file's name"
    owners = [r[path.stem] for r in REGISTRIES if r.key == f"model.{slot}" and path.stem in r]
    assert len(owners) == 1, f"{path}: {path.stem!r} is registered in {len(owners)} model.{slot} registries"
    defaults = dataclasses.asdict(owners[0].Settings())
    settings = {k: v for k, v in node.items() if k != "name"}
    assert settings == defaults, f"{path}: settings {settings} != {owners[0].__qualname__}'s defaults {defaults}"


def test_the_architecture_document_lists_every_registry_and_its_entries():
    """docs/architecture.md's table of registries: each registry's variable name appears in a row
    with its config key and every entry's name, so the table cannot fall behind the code."""
    import genlab.models as models_package  # noqa: F401 (every family registered)

    doc = (CONF.parent / "docs" / "architecture.md").read_text()
    rows = [line for line in doc.splitlines() if line.startswith("| `")]
    missing = []
    for r in REGISTRIES:
        names = [attr for module, m in list(sys.modules.items()) if module.startswith("genlab")
                 for attr, v in vars(m).items() if v is r]
        row = next((line for line in rows if any(f"`{n}`" in line for n in names)), None)
        if row is None:
            missing.append(f"no row names {names[0]} ({r.key})")
            continue
        key = "`metrics.<name>`" if r.key == "metrics" else f"`{r.key}"
        missing += [f"{names[0]}'s row lacks {x}" for x in [key, *r] if x not in row]
    assert not missing, "\n".join(missing)


def test_a_name_registered_twice_is_refused_unless_it_is_the_same_class_again():
    """Two classes under one name is an error at import; the same class defined again (a module
    run as a script, `python -m genlab.data.mnist`, defines its classes once more as __main__)
    keeps the first entry."""
    r = Registry("thing", "model.thing")

    def make():
        class Thing:
            pass
        return Thing

    first, again = make(), make()
    r.register("a")(first)
    r.register("a")(again)
    assert r["a"] is first

    class Other:
        pass

    with pytest.raises(ValueError, match="thing 'a' is registered twice"):
        r.register("a")(Other)
