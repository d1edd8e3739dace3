"""Sample quality: genlab's one entry, `sample_metrics`, a thin bridge to torch-fidelity.

Every number comes from torch-fidelity's `calculate_metrics` with a registered feature extractor
(see genlab.metrics.extractors); genlab adds the real-image reference with an on-disk cache whose key
cannot go stale, the uint8 conversion, argument checks, and `gather_samples` for DDP.

Units and signs (for the result keys):
- `fid`: Frechet distance between Gaussians fitted to the fake and real features, in squared
  feature units; >= 0 up to round-off, lower is better. Only comparable between runs that used the
  same extractor (`fid_extractor`) and the same numbers of images.
- `kid`, `kid_std`: unbiased MMD^2 with the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3,
  mean and std over random subsets; lower is better, slightly negative values mean "as close as
  the estimator can tell".
- `is`, `is_std`: Inception Score exp(E_x KL(p(y|x) || p(y))) over the extractor's logits, mean and
  std over 10 splits; in [1, number of classes], higher is better. Uses only the fake images.
- `precision`, `recall`: Kynkaenniemi et al. (2019) with k=3 nearest neighbours, in [0, 1], higher
  is better: precision = fraction of fakes inside the real manifold, recall = the converse.
- `fid_extractor`: the extractor's name, for summary.json.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import Dataset
from torch_fidelity import calculate_metrics

from genlab.config import require, require_choice
from genlab.metrics.extractors import (
    DOMAIN,
    INCEPTION,
    inception_weights_path,
    known_extractors,
    weights_hash,
)

# names accepted in `metrics` (config: metrics.which) -> the torch-fidelity switch they turn on
METRIC_SWITCH = {"fid": "fid", "kid": "kid", "is": "isc", "prc": "prc", "precision": "prc",
                 "recall": "prc"}


@dataclass
class RealReference:
    """The real images a sample is compared with, named so their features can be cached.

    `images` is a uint8 tensor [n, C, H, W] or a zero-argument callable returning one; a callable is
    only called when the cache misses. `fingerprint` identifies the exact images (it goes into the
    cache key), so that e.g. another data.split_seed or val_size never reads this cache.
    """

    dataset: str
    split: str
    n: int
    images: Tensor | Callable[[], Tensor]
    fingerprint: str = ""

    @classmethod
    def from_datamodule(cls, dm, split: str = "train", n: int = 10_000) -> RealReference:
        """The first `n` images of `split` of a genlab data module (its own fixed order)."""
        dm.setup()
        stored = dm.splits[split][0]  # uint8 images, or dSprites grid indices: cheap to hash
        n = min(n, len(stored))
        fingerprint = hashlib.sha256(stored[:n].contiguous().cpu().numpy().tobytes()).hexdigest()[:12]

        def load() -> Tensor:
            fetch, _ = dm.fetcher(split)
            return fetch(torch.arange(n))[0].cpu()

        return cls(dataset=dm.name, split=split, n=n, images=load, fingerprint=fingerprint)

    def load(self) -> Tensor:
        x = self.images() if callable(self.images) else self.images
        if x.dtype != torch.uint8:
            x = to_uint8(x)
        if len(x) != self.n:
            raise ValueError(f"RealReference {self.dataset}/{self.split}: expected {self.n} images, got {len(x)}")
        return x.cpu()


def cache_key(real: RealReference, extractor: str, inception_weights: str | Path | None = None) -> str:
    """The name real features are cached under: dataset, split, N, the images' fingerprint, the
    extractor and a hash of its weights."""
    digest = weights_hash(extractor, inception_weights)[:16]
    images = f"-i{real.fingerprint}" if real.fingerprint else ""
    return f"genlab-{real.dataset}-{real.split}-n{real.n}{images}-{extractor}-w{digest}"


def to_uint8(x: Tensor) -> Tensor:
    """Float images in [0, 1] -> uint8 0..255, rounded (the inverse of genlab's x / 255)."""
    return (x.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)


class _Images(Dataset):
    """uint8 images as torch-fidelity wants them: one [C, H, W] tensor per item.

    Inception takes 3 channels, so grey images are repeated; `load` runs on first use only, so a
    cached reference never renders or copies its images.
    """

    def __init__(self, load: Callable[[], Tensor], rgb: bool):
        self._load, self._rgb, self._x = load, rgb, None

    def _images(self) -> Tensor:
        if self._x is None:
            x = self._load()
            self._x = x.expand(-1, 3, -1, -1).contiguous() if self._rgb and x.shape[1] == 1 else x
        return self._x

    def __len__(self):
        return len(self._images())

    def __getitem__(self, i):
        return self._images()[i]


def sample_metrics(
    fake: Tensor,
    real: RealReference | Tensor,
    extractor: str,
    metrics: Sequence[str] = ("fid", "kid", "is", "prc"),
    inception_weights: str | Path | None = None,
    cache_dir: str | Path | None = None,
    batch_size: int = 256,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    device: str | torch.device | None = None,
    seed: int = 2020,
) -> dict[str, float | str]:
    """Sample-quality metrics of `fake` against `real` (see the module docstring for units).

    fake: float images [N, C, H, W] in [0, 1] (any device; quantised to uint8 like the real data).
    real: a RealReference (its features are cached in `cache_dir` when given) or float images.
    extractor: a registered name (genlab-fmnist-cnn, ..., inception-v3-compat).
    metrics: any of fid, kid, is, prc (precision and recall, also accepted by those names).
    inception_weights: path to torch-fidelity's Inception weights (config metrics.inception_weights).
    kid_subset_size is capped at the smaller image count; `seed` fixes KID subsets and IS splits.
    """
    require_choice(extractor, "metrics.extractor", known_extractors())
    for m in metrics:
        require_choice(m, "metrics.which", tuple(METRIC_SWITCH))
    require(len(metrics) > 0, "metrics.which", "a non-empty list", list(metrics))
    require(fake.dim() == 4 and len(fake) > 1, "fake", "float images [N>1, C, H, W]", tuple(fake.shape))
    if isinstance(real, Tensor):
        real_images = to_uint8(real) if real.dtype != torch.uint8 else real
        real, real_name = RealReference("tensor", "given", len(real_images), real_images.cpu()), None
    else:
        real_name = cache_key(real, extractor, inception_weights) if cache_dir is not None else None
    if extractor in DOMAIN:  # a domain CNN only reads its own dataset's image size
        shape = DOMAIN[extractor]["image_shape"]
        require(tuple(fake.shape[1:]) == shape, "metrics.extractor",
                f"an extractor for images of shape {shape} (got images {tuple(fake.shape[1:])})",
                extractor)

    weights = inception_weights_path(inception_weights) if extractor == INCEPTION else None
    switches = {METRIC_SWITCH[m]: True for m in metrics}
    cuda = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
    rgb = extractor == INCEPTION
    fake_u8 = to_uint8(fake).cpu()
    with _full_float32():
        out = calculate_metrics(
            input1=_Images(lambda: fake_u8, rgb),
            input2=_Images(real.load, rgb),
            input2_cache_name=real_name,
            cache=real_name is not None,
            cache_root=None if cache_dir is None else str(cache_dir),
            feature_extractor=extractor,
            feature_extractor_weights_path=weights,
            batch_size=batch_size,
            kid_subsets=kid_subsets,
            kid_subset_size=min(kid_subset_size, len(fake_u8), real.n),
            cuda=cuda,
            rng_seed=seed,
            save_cpu_ram=True,  # no DataLoader worker processes inside a training run
            verbose=False,
            **switches,
        )
    result: dict[str, float | str] = {"fid_extractor": extractor}
    renames = {"frechet_inception_distance": "fid", "kernel_inception_distance_mean": "kid",
               "kernel_inception_distance_std": "kid_std", "inception_score_mean": "is",
               "inception_score_std": "is_std", "precision": "precision", "recall": "recall"}
    result.update({ours: float(out[theirs]) for theirs, ours in renames.items() if theirs in out})
    return result


@contextmanager
def _full_float32():
    """Switch TF32 off while features are computed. PyTorch lets cuDNN convolutions use TF32 by
    default (and Lightning may allow it for matmuls); with it, a Fashion-MNIST FID on an H200
    differed from the CPU value by 8e-5 relative, without it by 4e-8, so GPU and CPU runs (and
    their shared cache) agree."""
    conv, mm = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = conv, mm


def extract_features(
    images: Tensor,
    extractor: str,
    layer: str = "features",
    inception_weights: str | Path | None = None,
    batch_size: int = 256,
) -> Tensor:
    """The extractor's `layer` features [N, D] (float32, CPU) of float images in [0, 1].

    The same path sample_metrics takes (uint8 quantisation, grey->RGB for Inception), for analysis
    and for checking the metrics against independent computations.
    """
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    require_choice(extractor, "metrics.extractor", known_extractors())
    weights = inception_weights_path(inception_weights) if extractor == INCEPTION else None
    net = FEATURE_EXTRACTORS_REGISTRY[extractor](extractor, [layer], feature_extractor_weights_path=weights)
    net.eval().requires_grad_(False)
    x = _Images(lambda: to_uint8(images).cpu(), rgb=extractor == INCEPTION)
    with torch.no_grad():
        return torch.cat([net(x[i : i + batch_size])[0].float() for i in range(0, len(x), batch_size)])


def gather_samples(local: Tensor) -> Tensor:
    """All-gather generated samples across DDP ranks: every rank gets all of them, in rank order.

    Ranks may hold different numbers of samples (sizes are exchanged first, shorter shards are
    padded for the collective and trimmed after). Without an initialised process group, or with a
    single process, this is the identity.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return local
    world = dist.get_world_size()
    local = local.contiguous()
    n = torch.tensor([local.shape[0]], dtype=torch.long, device=local.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    sizes_i = [int(s.item()) for s in sizes]
    padded = local.new_zeros((max(sizes_i), *local.shape[1:]))
    padded[: local.shape[0]] = local
    shards = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(shards, padded)
    return torch.cat([s[:k] for s, k in zip(shards, sizes_i, strict=True)])
