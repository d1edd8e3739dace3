"""Data modules: images held in memory as uint8 tensors and batched by index."""

from genlab.data.base import IndexBatches, InMemoryDataModule
from genlab.data.digits import DigitsDataModule
from genlab.data.dsprites import DSpritesDataModule
from genlab.data.fashion_mnist import FashionMNISTDataModule

__all__ = [
    "DSpritesDataModule",
    "DigitsDataModule",
    "FashionMNISTDataModule",
    "InMemoryDataModule",
    "IndexBatches",
]
