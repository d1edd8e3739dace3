"""Sample quality: genlab's one entry, `sample_metrics`, a thin bridge to torch-fidelity.

Every number comes from torch-fidelity's per-metric functions (those its `calculate_metrics`
calls) and a registered feature extractor (see genlab.metrics.extractors); genlab adds the
real-image reference with its own on-disk feature cache (npz without pickle, under a key that
cannot go stale), the uint8 conversion, argument checks, and `gather_samples` for DDP.

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

import logging
import os
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_isc import isc_featuresdict_to_metric
from torch_fidelity.metric_kid import kid_features_to_metric
from torch_fidelity.metric_prc import prc_features_to_metric
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
from torch_fidelity.utils import create_feature_extractor

from genlab.config import require, require_choice
from genlab.metrics.extractors import (
    DOMAIN,
    INCEPTION,
    extractor_image_shape,
    inception_weights_path,
    known_extractors,
    weights_hash,
)

log = logging.getLogger("genlab")

# names accepted in `metrics` (config: metrics.sample_quality.which) -> the torch-fidelity switch
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
        n = min(n, dm.fetcher(split)[1])
        fingerprint = dm.fingerprint(split, n)

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

    The numbers are torch-fidelity's (its feature extractors and its per-metric functions, the
    ones calculate_metrics calls); genlab extracts the features itself so that the real ones come
    from its own cache (see `real_features`) and torch-fidelity never reads a cache file.
    """
    require_choice(extractor, "metrics.extractor", known_extractors())
    for m in metrics:
        require_choice(m, "metrics.sample_quality.which", tuple(METRIC_SWITCH))
    require(len(metrics) > 0, "metrics.sample_quality.which", "a non-empty list", list(metrics))
    require(fake.dim() == 4 and len(fake) > 1, "fake", "float images [N>1, C, H, W]", tuple(fake.shape))
    if isinstance(real, Tensor):
        real_images = to_uint8(real) if real.dtype != torch.uint8 else real
        real, cache_dir = RealReference("tensor", "given", len(real_images), real_images.cpu()), None
    if extractor in DOMAIN:  # a domain CNN only reads its own dataset's image size
        shape = extractor_image_shape(extractor)
        require(tuple(fake.shape[1:]) == shape, "metrics.extractor",
                f"an extractor for images of shape {shape} (got images {tuple(fake.shape[1:])})",
                extractor)

    switches = {METRIC_SWITCH[m] for m in metrics}
    cuda = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
    fake_u8 = to_uint8(fake).cpu()
    layer = {m: FEATURE_EXTRACTORS_REGISTRY[extractor].get_default_feature_layer_for_metric(m)
             for m in ("isc", "fid", "kid", "prc")}
    net = _extractor(extractor, inception_weights, [layer[m] for m in sorted(switches)], cuda)
    fake_f = _features(net, fake_u8, extractor == INCEPTION, batch_size, cuda)
    kwargs = {"kid_subsets": kid_subsets, "kid_subset_size": min(kid_subset_size, len(fake_u8), real.n),
              "rng_seed": seed, "save_cpu_ram": True, "verbose": False}

    result: dict[str, float | str] = {"fid_extractor": extractor}
    if "isc" in switches:  # the fake images only
        out = isc_featuresdict_to_metric(fake_f, layer["isc"], **kwargs)
        result["is"], result["is_std"] = out["inception_score_mean"], out["inception_score_std"]
    if switches & {"fid", "kid", "prc"}:
        ref = real_features(real, extractor, inception_weights, cache_dir, batch_size, cuda)
        if "fid" in switches:
            mine = fid_features_to_statistics(fake_f[layer["fid"]])
            theirs = {"mu": ref[f"mu_{layer['fid']}"], "sigma": ref[f"sigma_{layer['fid']}"]}
            result["fid"] = fid_statistics_to_metric(mine, theirs, False)["frechet_inception_distance"]
        if "kid" in switches:
            out = kid_features_to_metric(fake_f[layer["kid"]], ref[f"features_{layer['kid']}"], **kwargs)
            result.update(kid=out["kernel_inception_distance_mean"], kid_std=out["kernel_inception_distance_std"])
        if "prc" in switches:
            out = prc_features_to_metric(fake_f[layer["prc"]], ref[f"features_{layer['prc']}"], **kwargs)
            result.update(precision=out["precision"], recall=out["recall"])
    return {k: v if k == "fid_extractor" else float(v) for k, v in result.items()}


# -- features ----------------------------------------------------------------------------------------
def _extractor(extractor: str, inception_weights, layers: list[str], cuda: bool):
    weights = inception_weights_path(inception_weights) if extractor == INCEPTION else None
    return create_feature_extractor(extractor, sorted(set(layers)), cuda=cuda,
                                    feature_extractor_weights_path=weights, verbose=False)


def _features(net, images_u8: Tensor, rgb: bool, batch_size: int, cuda: bool) -> dict[str, Tensor]:
    """The extractor's features of uint8 images, {layer: float [N, D] on the CPU}.

    A plain loop rather than torch-fidelity's DataLoader: the DataLoader draws its base seed from
    the global generator, so a cache miss would move the training stream."""
    parts: dict[str, list[Tensor]] = {}
    with torch.no_grad(), _full_float32():
        for i in range(0, len(images_u8), batch_size):
            x = images_u8[i : i + batch_size]
            if rgb and x.shape[1] == 1:  # Inception takes 3 channels: grey is repeated
                x = x.expand(-1, 3, -1, -1)
            x = x.contiguous().cuda() if cuda else x.contiguous()
            for k, v in net.convert_features_tuple_to_dict(net(x)).items():
                parts.setdefault(k, []).append(v.cpu())
    return {k: torch.cat(v) for k, v in parts.items()}


CACHE_FORMAT = 1  # bump when what a cache file holds changes


def real_features(
    real: RealReference,
    extractor: str,
    inception_weights: str | Path | None = None,
    cache_dir: str | Path | None = None,
    batch_size: int = 256,
    cuda: bool = False,
) -> dict[str, Tensor | np.ndarray]:
    """The real images' features for FID, KID and precision/recall, from `cache_dir` when cached.

    Returns {"features_<layer>": float [n, D] tensor, "mu_<layer>", "sigma_<layer>": numpy} for
    every layer those metrics read. The cache file is `<cache_key>.npz`, written atomically and
    read with allow_pickle=False, so a planted or corrupt file can hold numbers but never run code;
    a file that is not what genlab wrote (unreadable, other arrays, other shapes) is reported in one
    warning line and recomputed over.
    """
    cls = FEATURE_EXTRACTORS_REGISTRY[extractor]
    layers = sorted({cls.get_default_feature_layer_for_metric(m) for m in ("fid", "kid", "prc")})
    path = None if cache_dir is None else Path(cache_dir) / f"{cache_key(real, extractor, inception_weights)}.npz"
    if path is not None and path.exists():
        try:
            return _read_cache(path, layers, real.n)
        except (OSError, ValueError, KeyError, EOFError) as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            log.warning("ignoring FID cache file %s (%s); recomputing it", path, reason)
    net = _extractor(extractor, inception_weights, layers, cuda)
    feats = _features(net, real.load(), extractor == INCEPTION, batch_size, cuda)
    out: dict[str, Tensor | np.ndarray] = {}
    for layer in layers:
        stats = fid_features_to_statistics(feats[layer])
        out.update({f"features_{layer}": feats[layer], f"mu_{layer}": stats["mu"],
                    f"sigma_{layer}": stats["sigma"]})
    if path is not None:
        _write_cache(path, out)
    return out


def _write_cache(path: Path, arrays: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, format=np.array(CACHE_FORMAT),
                 **{k: v.numpy() if isinstance(v, Tensor) else v for k, v in arrays.items()})
    os.replace(tmp, path)  # readers see the old file or the whole new one, never a part


def _read_cache(path: Path, layers: list[str], n: int) -> dict[str, Tensor | np.ndarray]:
    with np.load(path, allow_pickle=False) as f:
        if "format" not in f.files or int(f["format"]) != CACHE_FORMAT:
            raise ValueError("not a genlab feature cache of this version")
        out: dict[str, Tensor | np.ndarray] = {}
        for layer in layers:
            feats, mu, sigma = f[f"features_{layer}"], f[f"mu_{layer}"], f[f"sigma_{layer}"]
            d = feats.shape[1] if feats.ndim == 2 else -1
            if feats.shape != (n, d) or mu.shape != (d,) or sigma.shape != (d, d):
                raise ValueError(f"arrays of layer {layer} have the wrong shapes")
            out.update({f"features_{layer}": torch.from_numpy(feats), f"mu_{layer}": mu,
                        f"sigma_{layer}": sigma})
    return out


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
    require_choice(extractor, "metrics.extractor", known_extractors())
    net = _extractor(extractor, inception_weights, [layer], cuda=False)
    return _features(net, to_uint8(images).cpu(), extractor == INCEPTION, batch_size, cuda=False)[layer].float()


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
