"""Data modules: images held in memory as uint8 tensors and batched by index.

DATASETS is the one registry of genlab's datasets: name -> data module class, which declares its
image shape and the FID feature extractor that fits its images (`fid_extractor`). A module
registers itself with @DATASETS.register("<name>"); conf/data/<name>.yaml names it (`name:`), and
training, genlab-sample (which rebuilds a checkpoint's data source by name and keyword arguments),
the probe and the extractor trainer all go through it. A new dataset is its module and its conf
file (and its import below, so the registry holds it).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping

from omegaconf import DictConfig, OmegaConf

from genlab.config import ConfigError
from genlab.data.base import DATASETS, IndexBatches, InMemoryDataModule

# isort: off
# imported in the registry's order (the order error messages list the datasets in): the default first
from genlab.data.fashion_mnist import FashionMNISTDataModule
from genlab.data.digits import DigitsDataModule
from genlab.data.dsprites import DSpritesDataModule
from genlab.data.mnist import MNISTDataModule
# isort: on


def dataset(name, key: str = "data.name") -> type[InMemoryDataModule]:
    """The data module class registered as `name`, or a ConfigError naming the key and the known
    datasets."""
    if not isinstance(name, str) or name not in DATASETS:
        raise ConfigError(f"{key}={name!r} is not a genlab dataset; allowed: {' | '.join(DATASETS)}")
    return DATASETS[name]


def dataset_name(dm) -> str:
    """A data module's registry name for messages (its class name outside genlab's data modules)."""
    return dm.name if isinstance(dm, InMemoryDataModule) else type(dm).__name__


def data_kwargs(module: type[InMemoryDataModule]) -> list[str]:
    """The keyword arguments a data module accepts (its own and those of InMemoryDataModule)."""
    mro = module.__mro__
    names: list[str] = []
    for cls in mro[: mro.index(InMemoryDataModule) + 1]:  # subclasses pass **kwargs on to the base
        for p in list(inspect.signature(cls.__init__).parameters.values())[1:]:
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in names:
                names.append(p.name)
    return names


def build_datamodule(config: Mapping | DictConfig, key: str = "data") -> InMemoryDataModule:
    """A data module from its plain config {'name': ..., **keyword arguments}: the class comes
    from DATASETS only, and a key the class does not take is refused rather than passed on."""
    if isinstance(config, DictConfig):
        config = OmegaConf.to_container(config, resolve=True)
    config = dict(config)
    entry = dataset(config.pop("name", None), f"{key}.name")
    allowed = data_kwargs(entry)
    for k in config:
        if k not in allowed:
            raise ConfigError(f"{key}.{k} is not an option of data {entry.registry_name!r}; "
                              f"allowed: {', '.join(allowed)}")
    return entry(**config)


__all__ = [
    "DATASETS",
    "dataset_name",
    "DSpritesDataModule",
    "DigitsDataModule",
    "FashionMNISTDataModule",
    "InMemoryDataModule",
    "IndexBatches",
    "MNISTDataModule",
    "build_datamodule",
    "data_kwargs",
    "dataset",
]
