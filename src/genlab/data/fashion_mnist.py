"""Fashion-MNIST (60,000 train + 10,000 test images of 28x28), found offline first.

Where the images come from, in order:
1. `data.root`/FashionMNIST/raw/*-ubyte (already decompressed, torchvision's layout);
2. the Debian package dataset-fashion-mnist (/usr/share/datasets/fashion-mnist/*.gz),
   decompressed into data.root (its md5s differ from torchvision's, so torchvision cannot verify
   them; genlab reads the idx files itself);
3. torchvision's download into data.root, when the network allows.
"""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

from genlab.data.base import DATASETS
from genlab.data.idx import FILES, IdxDataModule

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")


def _have_raw(raw: Path) -> bool:
    return all((raw / f).is_file() for pair in FILES.values() for f in pair)


def ensure_fashion_mnist(root: str | Path, debian_dir: Path = DEBIAN_DIR, download: bool = True) -> Path:
    """Return the folder holding the four decompressed idx files, placing them there if needed."""
    raw = Path(root) / "FashionMNIST" / "raw"
    if _have_raw(raw):
        return raw
    tried = [f"1. {raw} holds no decompressed idx files"]
    if all((debian_dir / f"{f}.gz").is_file() for pair in FILES.values() for f in pair):
        raw.mkdir(parents=True, exist_ok=True)
        for pair in FILES.values():
            for f in pair:
                tmp = raw / f".{f}.{os.getpid()}.tmp"  # per process: two may place the files at once
                with gzip.open(debian_dir / f"{f}.gz", "rb") as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                tmp.replace(raw / f)
        return raw
    tried.append(f"2. {debian_dir} is missing (install it: apt-get install dataset-fashion-mnist)")
    if download:
        try:
            from torchvision.datasets import FashionMNIST

            FashionMNIST(str(root), train=True, download=True)
            FashionMNIST(str(root), train=False, download=True)
            if _have_raw(raw):
                return raw
            tried.append("3. torchvision's download finished without the idx files")
        except Exception as e:  # network errors come in many types
            tried.append(f"3. torchvision's download failed: {type(e).__name__}: {e}")
    else:
        tried.append("3. download disabled (data.download=false)")
    raise FileNotFoundError("Fashion-MNIST not found. Tried:\n  " + "\n  ".join(tried)
                            + "\nProvide any one of the three and run again.")


@DATASETS.register("fashion_mnist")
class FashionMNISTDataModule(IdxDataModule):
    fid_extractor = "genlab-fmnist-cnn"  # the default FID feature extractor (genlab.metrics.extractors)
    # the dataset's names of its labels 0 .. 9 (figure legends)
    class_names = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot")
    ensure = staticmethod(ensure_fashion_mnist)
