"""sample_metrics against independent computations, its real-feature cache, and DDP gathering."""

import logging
import os
import pickle

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch_fidelity
from conftest import DATA

from genlab.config import ConfigError
from genlab.data import DigitsDataModule, FashionMNISTDataModule
from genlab.metrics import fid as fid_module
from genlab.metrics.fid import (
    RealReference,
    cache_key,
    extract_features,
    gather_samples,
    sample_metrics,
    to_uint8,
)


@pytest.fixture(scope="module")
def fmnist():
    dm = FashionMNISTDataModule(root=str(DATA), download=False)
    dm.setup()
    return dm


@pytest.fixture(scope="module")
def digits():
    dm = DigitsDataModule(val_size=150)
    dm.setup()
    return dm


class Images(torch.utils.data.Dataset):
    """uint8 images, one tensor per item: torch-fidelity's own input form."""

    def __init__(self, x):
        self.x = x

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i]


def frechet_reference(f1: np.ndarray, f2: np.ndarray) -> float:
    """|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)), in float64 with scipy's sqrtm."""
    f1, f2 = f1.astype(np.float64), f2.astype(np.float64)
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    assert np.abs(covmean.imag).max() < 1e-6 * np.abs(covmean.real).max()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean.real))


def test_fid_agrees_with_torch_fidelity_and_scipy(fmnist, tmp_path):
    real = RealReference.from_datamodule(fmnist, "train", 1200)
    test = fmnist.images("test", 800)
    fake = (test + 0.1 * torch.randn(test.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)

    ours = sample_metrics(fake, real, "genlab-fmnist-cnn", metrics=("fid",), cache_dir=tmp_path)
    assert ours["fid_extractor"] == "genlab-fmnist-cnn"
    theirs = torch_fidelity.calculate_metrics(
        input1=Images(to_uint8(fake)), input2=Images(real.load()), feature_extractor="genlab-fmnist-cnn",
        fid=True, cuda=False, cache=False, verbose=False, save_cpu_ram=True)["frechet_inception_distance"]
    reference = frechet_reference(extract_features(fake, "genlab-fmnist-cnn").numpy(),
                                  extract_features(real.load().float() / 255, "genlab-fmnist-cnn").numpy())
    assert ours["fid"] == pytest.approx(theirs, rel=1e-5)
    assert ours["fid"] == pytest.approx(reference, rel=1e-5)
    # the second call reads the cached real statistics and gives the same number
    again = sample_metrics(fake, real, "genlab-fmnist-cnn", metrics=("fid",), cache_dir=tmp_path)
    assert again["fid"] == pytest.approx(ours["fid"], rel=1e-12)


def test_cache_key_names_everything_that_changes_the_statistics(digits):
    ref = RealReference.from_datamodule(digits, "train", 1000)
    key = cache_key(ref, "genlab-digits-cnn")
    reshuffled = DigitsDataModule(val_size=150, split_seed=1)  # other images under the same name
    assert key == cache_key(RealReference.from_datamodule(digits, "train", 1000), "genlab-digits-cnn")
    assert "digits" in key and "train" in key and "n1000" in key and "genlab-digits-cnn" in key
    others = {
        cache_key(RealReference.from_datamodule(digits, "train", 999), "genlab-digits-cnn"),
        cache_key(RealReference.from_datamodule(digits, "test", 1000), "genlab-digits-cnn"),
        cache_key(ref, "genlab-fmnist-cnn"),
        cache_key(RealReference.from_datamodule(reshuffled, "train", 1000), "genlab-digits-cnn"),
    }
    assert key not in others and len(others) == 4


def test_a_cache_is_read_for_its_own_key_only(digits, tmp_path, monkeypatch):
    fake = digits.images("test")
    loads = []

    def reference(n):
        ref = RealReference.from_datamodule(digits, "train", n)
        inner = ref.images
        ref.images = lambda: loads.append(n) or inner()
        return ref

    clean = sample_metrics(fake, reference(1000), "genlab-digits-cnn", metrics=("fid",), cache_dir=tmp_path)
    assert loads == [1000]
    stats = list(tmp_path.glob(cache_key(reference(1000), "genlab-digits-cnn") + "*.npz"))
    assert len(stats) == 1 and len(list(tmp_path.iterdir())) == 1  # nothing of torch-fidelity's
    # poison the cached statistics: the same key now reads them (and loads no images) ...
    with np.load(stats[0]) as f:
        arrays = dict(f)
    arrays["mu_features"] = arrays["mu_features"] + 10.0
    with open(stats[0], "wb") as f:
        np.savez(f, **arrays)
    poisoned = sample_metrics(fake, reference(1000), "genlab-digits-cnn", metrics=("fid",), cache_dir=tmp_path)
    assert loads == [1000] and poisoned["fid"] > clean["fid"] + 100
    # ... while another N, or the same N with other extractor weights, never does
    other_n = sample_metrics(fake, reference(999), "genlab-digits-cnn", metrics=("fid",), cache_dir=tmp_path)
    assert loads == [1000, 999] and abs(other_n["fid"] - clean["fid"]) < 0.2 * clean["fid"]
    monkeypatch.setattr(fid_module, "weights_hash", lambda *a, **k: "retrained" + "0" * 56)
    retrained = sample_metrics(fake, reference(1000), "genlab-digits-cnn", metrics=("fid",), cache_dir=tmp_path)
    assert loads == [1000, 999, 1000]
    assert retrained["fid"] == pytest.approx(clean["fid"], rel=1e-9)


def test_all_metrics_keys_ranges_and_checks(digits):
    real = RealReference.from_datamodule(digits, "train", 1000)
    fake = digits.images("test")
    out = sample_metrics(fake, real, "genlab-digits-cnn", kid_subsets=20)
    assert set(out) == {"fid_extractor", "fid", "kid", "kid_std", "is", "is_std", "precision", "recall"}
    assert out["fid"] > 0 and 1 <= out["is"] <= 10
    assert 0 <= out["precision"] <= 1 and 0 <= out["recall"] <= 1
    by_name = sample_metrics(fake, real, "genlab-digits-cnn", metrics=["precision", "recall"])
    assert by_name["precision"] == out["precision"] and by_name["recall"] == out["recall"]
    # real images given as a tensor: the same numbers as through a RealReference
    as_tensor = sample_metrics(fake, real.load().float() / 255, "genlab-digits-cnn", metrics=("fid",))
    assert as_tensor["fid"] == pytest.approx(out["fid"], rel=1e-9)
    with pytest.raises(ConfigError, match="metrics.sample_quality.which"):
        sample_metrics(fake, real, "genlab-digits-cnn", metrics=("fid", "lpips"))
    with pytest.raises(ConfigError, match="metrics.extractor"):
        sample_metrics(fake, real, "genlab-fmnist-cnn")  # 8x8 images, a 28x28 extractor
    with pytest.raises(ConfigError, match="metrics.extractor"):
        sample_metrics(fake, real, "inception")


def test_gather_samples_is_the_identity_in_one_process():
    x = torch.randn(5, 1, 8, 8)
    assert gather_samples(x) is x


SHARDS = (150, 147)  # ranks hold different numbers of samples


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        dm = DigitsDataModule(val_size=150)
        dm.setup()
        fake = dm.images("test")
        start = sum(SHARDS[:rank])
        gathered = gather_samples(fake[start : start + SHARDS[rank]])
        result = sample_metrics(gathered, dm.images("train", 1000), "genlab-digits-cnn",
                                metrics=("fid", "kid", "prc"), kid_subsets=20)
        torch.save({"gathered": gathered, "result": result}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_metrics_of_gathered_samples_equal_the_single_process_ones(digits, tmp_path):
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    fake = digits.images("test")[: sum(SHARDS)]
    single = sample_metrics(fake, digits.images("train", 1000), "genlab-digits-cnn",
                            metrics=("fid", "kid", "prc"), kid_subsets=20)
    worst = 0.0
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        assert torch.equal(got["gathered"], fake)  # every rank holds all samples, in rank order
        for k in ("fid", "kid", "precision", "recall"):
            rel = abs(got["result"][k] - single[k]) / abs(single[k])
            assert rel < 1e-6, (k, rel)
            worst = max(worst, rel)
    print(f"DDP vs single process: largest relative difference {worst:.1e}")


class _Planted:
    """Unpickling this creates the marker file: proof that a cache file ran code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_planted_cache_file_never_runs_code(digits, tmp_path, caplog):
    """A pickle at every path torch-fidelity or genlab would read for this reference: the marker
    never appears, genlab's own file is reported in one line and recomputed, and the numbers are
    those of a run without any cache."""
    ref = RealReference.from_datamodule(digits, "train", 1000)
    fake = digits.images("test")
    key = cache_key(ref, "genlab-digits-cnn")
    marker = tmp_path / "marker"
    cache = tmp_path / "cache"
    cache.mkdir()
    planted = [cache / f"{key}.npz"]  # genlab's
    for layer in ("features", "logits"):  # torch-fidelity's feature and statistics files
        planted += [cache / f"{key}-genlab-digits-cnn-features-{layer}.pt",
                    cache / f"{key}-genlab-digits-cnn-stat-fid-{layer}.pt"]
    with open(planted[0], "wb") as f:  # a bare pickle where genlab looks ...
        pickle.dump(_Planted(marker), f)
    for p in planted[1:]:  # ... and torch.save files (a pickle in a zip) where torch-fidelity would
        torch.save({"mu": _Planted(marker)}, p)
    armed = tmp_path / "armed"
    pickle.loads(pickle.dumps(_Planted(armed)))  # the plant works: unpickling runs its code
    assert armed.exists()

    with caplog.at_level(logging.WARNING, logger="genlab"):
        got = sample_metrics(fake, ref, "genlab-digits-cnn", metrics=("fid", "kid", "prc", "is"),
                             cache_dir=cache, kid_subsets=10)
    assert not marker.exists()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and str(planted[0]) in warnings[0] and "\n" not in warnings[0]
    clean = sample_metrics(fake, ref, "genlab-digits-cnn", metrics=("fid", "kid", "prc", "is"),
                           kid_subsets=10)
    assert got == clean
    # the file is now genlab's own again, and read without a warning
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="genlab"):
        again = sample_metrics(fake, ref, "genlab-digits-cnn", metrics=("fid",), cache_dir=cache)
    assert not caplog.records and again["fid"] == clean["fid"]
    assert not marker.exists()
