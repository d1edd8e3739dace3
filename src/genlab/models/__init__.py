"""LightningModules, one per model family, each composed of registered components; variants are
components and settings, not subclasses (model=named_vae is a VAE preset).

FAMILIES (genlab.models.common) is the only way from a name to a model class: `model.family` in a
config, and the family's name in a checkpoint. genlab-sample and genlab-train's ckpt_path rebuild
the model through the registries, never from an import path, so a checkpoint cannot make genlab
import or call anything else. A new family is a GenerativeModule registered with
@FAMILIES.register("<name>") in a module imported below, and its conf/model/<name>.yaml.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from genlab.config import ConfigError, require
from genlab.corruption import as_corruption
from genlab.data import DATASETS, data_kwargs
from genlab.models.common import FAMILIES, GenerativeModule
from genlab.models.dae import DAE
from genlab.models.deep_mlp import DeepMLP
from genlab.models.gan import DCGAN, RestorationGAN
from genlab.models.rbm import RBM
from genlab.models.vae import VAE


def build_model(node: Mapping, image_shape) -> GenerativeModule:
    """A model from its config node: `family` picks the class from FAMILIES, every other key is
    one of that family's settings (a component node, a number, ...)."""
    from genlab.settings import plain

    node = dict(plain(node))
    family = family_of(node)
    node.pop("family")
    return family(list(image_shape), **node)


def family_of(node: Mapping) -> type[GenerativeModule]:
    """The family class a model config node names (`model.family`)."""
    return FAMILIES.get(node.get("family"), "model.family")


def family_name(cls: type) -> str:
    """The registry name of a family class; a class outside FAMILIES cannot write a checkpoint
    that genlab could read back, so it is refused here, when the run starts saving."""
    return FAMILIES.name_of(cls)


@dataclass
class GenlabCheckpoint:
    """A checkpoint whose names have been checked against genlab's registries."""

    family: type[GenerativeModule]
    data: str | None  # a DATASETS name, None when the model was trained outside genlab-train
    data_kwargs: dict
    raw: dict  # everything torch.load read (weights_only: tensors and plain containers)


def _named(value) -> str:
    """The name a checkpoint entry gives, for the error message: a Hydra-style node is named by
    its `_target_`, so the user reads the import path genlab refused to follow."""
    if isinstance(value, Mapping):
        value = value.get("_target_", value.get("name", dict(value)))
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def _code_reference(value, key: str) -> tuple[str, object] | None:
    """The first `_target_` inside a checkpoint's plain values, as (dotted key, what it names):
    hyper-parameters and data options are numbers, strings and lists, never an import path."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            if k == "_target_":
                return f"{key}._target_", v
            found = _code_reference(v, f"{key}.{k}")
            if found:
                return found
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            found = _code_reference(v, f"{key}[{i}]")
            if found:
                return found
    return None


def read_genlab_checkpoint(path: str | Path, key: str = "ckpt",
                           expect_family: type | None = None,
                           expect_data: str | None = None) -> GenlabCheckpoint:
    """Read a checkpoint written by genlab-train and check every name in it against FAMILIES and
    genlab.data.DATASETS; nothing in it is imported or instantiated here. Any other content, or a
    family/dataset other than the expected one (a run continued from it), is a RunReadError of
    one line naming the checkpoint and the offending value."""
    from genlab.runs import RunReadError, read_checkpoint

    raw = read_checkpoint(path, key)
    where = f"{key}={str(path)!r}"
    meta = raw.get("genlab")
    if not isinstance(meta, Mapping):
        raise RunReadError(f"{where}: not written by genlab-train (no 'genlab' entry)")
    if "family" not in meta:  # checkpoints from before the registry recorded an import path
        raise RunReadError(f"{where}: unknown model family {_named(meta.get('model_class'))} (an "
                           f"import path, as earlier genlab versions wrote); allowed: {' | '.join(FAMILIES)}")
    family = meta["family"]
    if not (isinstance(family, str) and family in FAMILIES):
        raise RunReadError(f"{where}: unknown model family {_named(family)}; "
                           f"allowed: {' | '.join(FAMILIES)}")
    found = (_code_reference(meta, "genlab")
             or _code_reference(raw.get("hyper_parameters"), "hyper_parameters"))
    if found:
        raise RunReadError(f"{where}: {found[0]} names code to run ({_named(found[1])}); genlab "
                           "rebuilds models and data only from its registries")
    data, kwargs = meta.get("data"), meta.get("data_kwargs") or {}
    if data is not None and not (isinstance(data, str) and data in DATASETS):
        raise RunReadError(f"{where}: unknown dataset {_named(data)}; allowed: {' | '.join(DATASETS)}")
    if not isinstance(kwargs, Mapping):
        raise RunReadError(f"{where}: data_kwargs must be a mapping, got {_named(kwargs)}")
    if data is not None:
        allowed = data_kwargs(DATASETS[data])
        unknown = [k for k in kwargs if k not in allowed]
        if unknown:
            raise RunReadError(f"{where}: unknown option {_named(unknown[0])} of dataset {data!r}; "
                               f"allowed: {', '.join(allowed)}")
    if expect_family is not None and FAMILIES[family] is not expect_family:
        expected = next((n for n, c in FAMILIES.items() if c is expect_family),
                        expect_family.__qualname__)
        raise RunReadError(f"{where}: a {family!r} checkpoint cannot continue a {expected!r} "
                           f"model (choose model={family})")
    if expect_data is not None and data is not None and data != expect_data:
        raise RunReadError(f"{where}: a checkpoint trained on data={data} cannot continue a "
                           f"data={expect_data} run")
    if not isinstance(raw.get("hyper_parameters"), Mapping):
        raise RunReadError(f"{where}: no hyper_parameters to rebuild the {family!r} model from")
    return GenlabCheckpoint(FAMILIES[family], data, dict(kwargs), raw)


def load_model(path: str | Path, key: str = "ckpt", device: str = "cpu"):
    """Rebuild a genlab model from its checkpoint alone, through the registry: the family's own
    constructor with the stored hyper-parameters (only the arguments it declares), then the
    weights. Returns (model in eval mode, the GenlabCheckpoint)."""
    from genlab.runs import RunReadError

    ckpt = read_genlab_checkpoint(path, key)
    where, hp = f"{key}={str(path)!r}", ckpt.raw["hyper_parameters"]
    allowed = ["image_shape", *ckpt.family.Settings.names()]
    unknown = [k for k in hp if k not in allowed]
    if unknown:
        # a family composed of components stores each as a node (`net: {name: conv, ...}`); a
        # checkpoint with flat keys in their place (arch, beta, iwae_k, d_mode's settings, ...)
        # predates that, and its settings cannot be mapped without guessing
        old = not all(k in hp for k in ckpt.family.Settings.names() if k in COMPONENT_SLOTS)
        hint = (" (written by genlab before its families were composed of components; retrain "
                "it with this version)") if old else ""
        raise RunReadError(f"{where}: unknown hyper-parameter {_named(unknown[0])} of family "
                           f"{family_name(ckpt.family)!r}{hint}; allowed: {', '.join(allowed)}")
    try:
        model = ckpt.family(**hp)
        model.load_state_dict(ckpt.raw["state_dict"])
    except (ConfigError, TypeError, RuntimeError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RunReadError(f"{where}: cannot rebuild the {family_name(ckpt.family)!r} model "
                           f"from it ({first})") from None
    return model.to(device).eval(), ckpt


# the settings that hold component nodes in some family (a checkpoint without them is older)
COMPONENT_SLOTS = ("net", "likelihood", "posterior", "prior", "objective", "d_mode", "loss",
                   "generator", "discriminator", "optimizer")

# the config groups a run may set for a model that ignores them, when its top-level key
# allow_unused names them (e.g. a sweep over d_mode whose plain arm ignores the corruption)
UNUSED_OK = ("corruption",)


def check_corruption_read(model: GenerativeModule, run_config: Mapping) -> None:
    """Validate the run's corruption whether or not the model applies it, and refuse one that it
    does not apply (a user who sets corruption=gaussian with model=vae would believe it was
    applied) unless the run's allow_unused names the group: one ConfigError line that says which
    families and hyper-parameters read it."""
    allow_unused = run_config.get("allow_unused") or []
    ok = isinstance(allow_unused, Sequence) and not isinstance(allow_unused, str)
    require(ok and all(g in UNUSED_OK for g in allow_unused), "allow_unused",
            f"a list of groups from [{', '.join(UNUSED_OK)}]", allow_unused)
    corruption = run_config.get("corruption")
    if corruption is None:
        return
    # the checks a model that reads it makes: corruption.kind, corruption.level, ...
    if OmegaConf.is_config(corruption):
        corruption = OmegaConf.to_container(corruption, resolve=True)
    kind = as_corruption(corruption).kind
    when = type(model).reads_corruption_when()

    def value(k: str):  # a setting's value; a component's node (a mapping) by its name
        v = model.hparams.get(k)
        return v.get("name") if isinstance(v, Mapping) else v

    if kind == "none" or "corruption" in allow_unused or (
            when is not None and all(value(k) in v for k, v in when.items())):
        return

    def described(name: str, values: Mapping) -> str:
        return " ".join([f"model={name}", *(f"model.{k}={'|'.join(map(str, v))}" for k, v in values.items())])

    name = next((n for n, c in FAMILIES.items() if c is type(model)), type(model).__qualname__)
    this = described(name, {k: [value(k)] for k in when or {}})
    # by name: the order in which families register (their import order) is no order for a reader
    readers = [described(n, c.reads_corruption_when()) for n, c in sorted(FAMILIES.items())
               if c.reads_corruption_when() is not None]
    raise ConfigError(f"corruption={kind} has no effect with {this}; "
                      f"it is read by {', '.join(readers)} (allow_unused=[corruption] keeps it anyway)")


__all__ = ["DAE", "DCGAN", "FAMILIES", "RBM", "VAE", "DeepMLP", "GenerativeModule", "GenlabCheckpoint",
           "RestorationGAN", "UNUSED_OK", "build_model", "check_corruption_read", "family_name", "family_of",
           "load_model", "read_genlab_checkpoint"]
