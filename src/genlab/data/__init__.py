"""Data modules: images held in memory as uint8 tensors and batched by index.

DATASETS is the one table of genlab's datasets: name -> data module class, image shape and the
FID feature extractor that fits its images. conf/data/<name>.yaml names its entry (`name:`), and
training, genlab-sample (which rebuilds a checkpoint's data source by name and keyword arguments),
the probe and the extractor trainer all go through it. A new dataset is its module, one entry
here and its conf file.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf

from genlab.config import ConfigError
from genlab.data.base import IndexBatches, InMemoryDataModule
from genlab.data.digits import DigitsDataModule
from genlab.data.dsprites import DSpritesDataModule
from genlab.data.fashion_mnist import FashionMNISTDataModule
from genlab.data.mnist import MNISTDataModule


@dataclass(frozen=True)
class Dataset:
    module: type[InMemoryDataModule]
    extractor: str  # the default FID feature extractor (genlab.metrics.extractors)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.module.image_shape


DATASETS: dict[str, Dataset] = {
    "fashion_mnist": Dataset(FashionMNISTDataModule, "genlab-fmnist-cnn"),
    "digits": Dataset(DigitsDataModule, "genlab-digits-cnn"),
    "dsprites": Dataset(DSpritesDataModule, "genlab-dsprites-cnn"),
    "mnist": Dataset(MNISTDataModule, "genlab-mnist-cnn"),
}


def dataset(name, key: str = "data.name") -> Dataset:
    """The registry entry of `name`, or a ConfigError naming the key and the known datasets."""
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
    allowed = data_kwargs(entry.module)
    for k in config:
        if k not in allowed:
            raise ConfigError(f"{key}.{k} is not an option of data {entry.module.name!r}; "
                              f"allowed: {', '.join(allowed)}")
    return entry.module(**config)


__all__ = [
    "DATASETS",
    "dataset_name",
    "DSpritesDataModule",
    "Dataset",
    "DigitsDataModule",
    "FashionMNISTDataModule",
    "InMemoryDataModule",
    "IndexBatches",
    "MNISTDataModule",
    "build_datamodule",
    "data_kwargs",
    "dataset",
]
