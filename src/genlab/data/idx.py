"""The IDX format of MNIST and Fashion-MNIST, and the data module both are read through.

Both ship as four IDX files of the same names (torchvision's layout, uncompressed):
train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from genlab.data.base import ClassLabelled

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: Path) -> np.ndarray:
    """Read an idx file (the MNIST format): magic, dims as big-endian int32, then uint8 data."""
    data = path.read_bytes()
    if data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise ValueError(f"{path} is not an idx file of unsigned bytes")
    ndim = data[3]
    dims = np.frombuffer(data, dtype=">i4", count=ndim, offset=4)
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def read_splits(raw: Path) -> dict:
    """{'train': (images uint8 [N, 1, 28, 28], labels int64 [N]), 'test': (...)} from `raw`."""
    out = {}
    for split, (images, labels) in FILES.items():
        x = torch.from_numpy(read_idx(raw / images).copy()).unsqueeze(1)
        y = torch.from_numpy(read_idx(raw / labels).astype(np.int64))
        out[split] = (x, y)
    return out


class IdxDataModule(ClassLabelled):
    """A 28x28, 10-class source read from the four IDX files that `ensure(root, download=...)`
    finds or places (data.download: whether it may go to the network)."""

    image_shape = (1, 28, 28)
    num_classes = 10

    def __init__(self, download: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.download = download

    @staticmethod
    def ensure(root: str | Path, download: bool = True) -> Path:
        raise NotImplementedError

    def load(self):
        return read_splits(self.ensure(self.root, download=self.download))
