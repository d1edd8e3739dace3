"""Feature extractors for the sample-quality metrics, registered with torch-fidelity.

Two kinds, both reached by name through torch-fidelity's registry:

- `inception-v3-compat`: torch-fidelity's own Inception (the FID everyone reports). Its weights
  (~91 MB) are downloaded by torch-fidelity unless they are already in torch.hub's cache or given as
  `metrics.inception_weights=PATH`. Offline and absent, `inception_weights_path` raises
  `ExtractorUnavailable`, which says where to get them; genlab never falls back to another extractor.
- genlab's domain extractors: a small CNN classifier per dataset, trained by
  `python -m genlab.metrics.train_extractor --data NAME` and shipped in src/genlab/weights/.
  Their FIDs are on their own scale (not comparable with Inception FIDs, nor with each other).

  | extractor            | targets (test accuracy)                                  | weights |
  |----------------------|----------------------------------------------------------|---------|
  | genlab-fmnist-cnn    | class: 0.9214                                            | 0.76 MB |
  | genlab-digits-cnn    | digit: 0.9832                                            | 0.27 MB |
  | genlab-dsprites-cnn  | shape 0.79, scale 0.65, pos_x 0.79, pos_y 0.77           | 0.94 MB |
  | genlab-mnist-cnn     | digit: 0.9923                                            | 0.76 MB |

  Each was made by `python -m genlab.metrics.train_extractor --data NAME --sanity`, NAME its
  dataset (fashion_mnist, digits, dsprites, mnist); the measured accuracy and the exact command are
  also stored inside each .pt file (keys `test_accuracy`, `command`) and listed, with the sanity
  FIDs, in src/genlab/weights/README.md.

Feature layers of a domain extractor:
- `features`: the 128-d output of the penultimate *linear* layer, taken before its ReLU. Post-ReLU
  features of such a small net have many units that are zero on most images, which makes the
  feature covariance singular (and sqrtm in FID unstable); the pre-activation layer is full rank on
  real data (tested). Used for FID, KID and precision/recall.
- `logits`: the classifier logits of the first head (the class for (Fashion-)MNIST and digits, the
  shape for dSprites). Used for the Inception Score, which is then bounded by that head's classes.

Inputs: torch-fidelity hands extractors uint8 images [B, C, H, W] in 0..255; domain extractors take
them at the dataset's own size and channels (C=1).
"""

from __future__ import annotations

import hashlib
import socket
import threading
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

from genlab.data import DATASETS

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
INCEPTION = "inception-v3-compat"
INCEPTION_URL = URL_INCEPTION_V3
FEATURE_DIM = 128

# Each domain extractor: the dataset it belongs to (its genlab.data.DATASETS name, which also gives
# the image shape it takes), the number of classes per head, which label columns are the heads'
# targets (None: the label itself), and how the trunk downsamples. dSprites orientation is left out as a target: symmetric
# shapes make it ambiguous.
# Downsampling: conv + max-pool made the Fashion-MNIST features order the sanity FIDs as expected
# (floor << noised < blurred; strided convs and average pooling put blur below noise, measured on
# one GPU run each); dSprites keeps strided convs because full-resolution convs on 64x64 images
# cost ~8x more per evaluation.
DOMAIN = {
    "genlab-fmnist-cnn": {"data": "fashion_mnist", "heads": (10,),
                          "label_columns": None, "downsample": "maxpool"},
    "genlab-digits-cnn": {"data": "digits", "heads": (10,),
                          "label_columns": None, "downsample": "maxpool"},
    "genlab-dsprites-cnn": {"data": "dsprites", "heads": (3, 6, 32, 32),
                            "label_columns": (0, 1, 3, 4), "downsample": "stride"},
    "genlab-mnist-cnn": {"data": "mnist", "heads": (10,),
                         "label_columns": None, "downsample": "maxpool"},
}


def extractor_image_shape(name: str) -> tuple[int, int, int]:
    """The image shape [C, H, W] a domain extractor takes: that of its dataset in genlab.data."""
    return tuple(DATASETS[DOMAIN[name]["data"]].image_shape)


class ExtractorUnavailable(FileNotFoundError):
    """A feature extractor's weights are not on this machine and cannot be fetched."""


# -- the domain network ----------------------------------------------------------------------------
class DomainCNN(nn.Module):
    """A small classifier: 3x3 convs that halve the map (stride 2, or a max/average pool after the
    conv) until it is at most 4x4, then a 128-d linear layer (`features`, pre-activation) and one
    linear head per target.

    forward(x float [B, C, H, W] in [0, 1]) -> (features [B, 128], logits [B, sum(heads)]).
    """

    def __init__(self, image_shape: tuple[int, int, int], heads: tuple[int, ...], width: int = 32,
                 max_width: int = 64, feature_dim: int = FEATURE_DIM, downsample: str = "stride"):
        super().__init__()
        c, size, _ = image_shape
        layers: list[nn.Module] = []
        while size > 4 or not layers:
            c_next = width if not layers else min(2 * c, max_width)
            if downsample == "stride":
                layers += [nn.Conv2d(c, c_next, 3, stride=2, padding=1), nn.ReLU()]
            else:
                pool = nn.MaxPool2d if downsample == "maxpool" else nn.AvgPool2d
                layers += [nn.Conv2d(c, c_next, 3, padding=1), nn.ReLU(), pool(2, ceil_mode=True)]
            c, size = c_next, (size + 1) // 2
        self.trunk = nn.Sequential(*layers, nn.Flatten())
        self.features = nn.Linear(c * size * size, feature_dim)
        self.head = nn.Linear(feature_dim, sum(heads))
        self.heads = tuple(heads)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        f = self.features(self.trunk(x * 2 - 1))
        return f, self.head(F.relu(f))

    def split_logits(self, logits: Tensor) -> list[Tensor]:
        return list(logits.split(self.heads, dim=1))


def domain_weights_path(name: str) -> Path:
    return WEIGHTS_DIR / f"{name}.pt"


def load_domain_cnn(name: str, path: str | Path | None = None) -> DomainCNN:
    """The trained domain CNN `name`, from `path` or the shipped weights (eval mode, on CPU)."""
    path = Path(path) if path is not None else domain_weights_path(name)
    if not path.is_file():
        raise ExtractorUnavailable(
            f"feature extractor {name!r}: weights file {path} is missing. Retrain it with\n"
            f"  python -m genlab.metrics.train_extractor --data {DOMAIN[name]['data']}")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    spec = DOMAIN[name]
    net = DomainCNN(extractor_image_shape(name), spec["heads"], downsample=spec["downsample"])
    net.load_state_dict(blob["state_dict"])
    return net.eval().requires_grad_(False)


class DomainFeatureExtractor(FeatureExtractorBase):
    """torch-fidelity wrapper of a DomainCNN; one class registered under every domain name."""

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        self.image_shape = extractor_image_shape(name)
        self.net = load_domain_cnn(name, feature_extractor_weights_path)

    @staticmethod
    def get_provided_features_list():
        return ("features", "logits")

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return "logits" if metric == "isc" else "features"

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        raise NotImplementedError("genlab's domain extractors are not compiled")

    def forward(self, x: Tensor):
        if x.dtype != torch.uint8 or tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(f"{self.name} expects uint8 images [B, {', '.join(map(str, self.image_shape))}]"
                             f", got {x.dtype} {tuple(x.shape)}")
        features, logits = self.net(x.float() / 255.0)
        # IS takes the first head only: it is the class (or the shape) the score is about
        out = {"features": features, "logits": self.net.split_logits(logits)[0]}
        return tuple(out[k] for k in self.features_list)


def register_extractors() -> None:
    """Register genlab's domain extractors with torch-fidelity (idempotent)."""
    for name in DOMAIN:
        if name not in FEATURE_EXTRACTORS_REGISTRY:
            register_feature_extractor(name, DomainFeatureExtractor)


register_extractors()


def known_extractors() -> tuple[str, ...]:
    return (*DOMAIN, INCEPTION)


# -- Inception weights: found offline or explained ---------------------------------------------------
def _inception_cache_file() -> Path:
    """Where torch.hub (and so torch-fidelity) keeps the downloaded Inception weights."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_URL.rsplit("/", 1)[-1]


def _online(host: str = "github.com", port: int = 443, timeout: float = 3.0) -> bool:
    """Can we open a TCP connection to `host`? Bounded in time even when DNS hangs."""
    ok: list[bool] = []

    def probe():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 1.0)
    return bool(ok)


def inception_weights_path(inception_weights: str | Path | None) -> str | None:
    """The Inception weights file to use: the given path, else torch.hub's cached download.

    Returns None only when neither exists but the network is reachable (torch-fidelity then
    downloads into torch.hub's cache). Raises ExtractorUnavailable otherwise, naming the URL and
    the config key; the local checks come first, so nothing waits on the network when the file is
    there.
    """
    cached = _inception_cache_file()
    if inception_weights is not None:
        path = Path(inception_weights).expanduser()
        if path.is_file():
            return str(path)
        problem = f"metrics.inception_weights={inception_weights} does not exist"
    elif cached.is_file():
        return str(cached)
    elif _online():
        return None
    else:
        problem = f"they are not in torch.hub's cache ({cached}) and the network is unreachable"
    raise ExtractorUnavailable(
        f"FID extractor {INCEPTION!r} needs torch-fidelity's Inception weights: {problem}.\n"
        f"Download {INCEPTION_URL}\n"
        f"on a machine with internet, copy it here, and pass metrics.inception_weights=/path/to/"
        f"{cached.name} (or put it at {cached}).\n"
        f"genlab's offline extractors need no download: {', '.join(DOMAIN)}.")


def weights_hash(extractor: str, inception_weights: str | Path | None = None) -> str:
    """sha256 of the weights file an extractor will load (for cache keys): a retrained or replaced
    extractor never reads statistics computed with the old one."""
    if extractor in DOMAIN:
        path = domain_weights_path(extractor)
        if not path.is_file():
            load_domain_cnn(extractor)  # raises the error that says how to retrain
    elif extractor == INCEPTION:
        found = inception_weights_path(inception_weights)
        if found is None:  # to be downloaded: the URL's file name carries torch-fidelity's hash
            return "url-" + INCEPTION_URL.rsplit("-", 1)[-1].split(".")[0]
        path = Path(found)
    else:
        raise ValueError(f"unknown feature extractor {extractor!r}; known: {', '.join(known_extractors())}")
    return _file_sha256(path)


_HASHES: dict[tuple[str, int, int], str] = {}


def _file_sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)  # re-hash when the file changes
    if key not in _HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]
