"""Data sources: shapes, ranges, splits, sharding, and the offline Fashion-MNIST search."""

from __future__ import annotations

import gzip

import pytest
import torch
from conftest import DATA

from genlab.data import (
    DigitsDataModule,
    DSpritesDataModule,
    FashionMNISTDataModule,
    IndexBatches,
    dsprites,
)
from genlab.data.fashion_mnist import ensure_fashion_mnist
from genlab.data.idx import FILES, read_idx


@pytest.fixture(scope="module")
def fmnist():
    dm = FashionMNISTDataModule(root=str(DATA))
    dm.setup()
    return dm


def test_fashion_mnist_splits(fmnist):
    sizes = {k: tuple(v[0].shape) for k, v in fmnist.splits.items()}
    assert sizes == {"train": (55000, 1, 28, 28), "val": (5000, 1, 28, 28), "test": (10000, 1, 28, 28)}
    assert all(v[0].dtype == torch.uint8 for v in fmnist.splits.values())
    x = fmnist.images("test", 100)
    assert x.dtype == torch.float32 and x.min() >= 0 and x.max() <= 1 and x.max() > 0.99
    # all ten classes in every split, and the val split is a fixed function of split_seed
    assert all(len(v[1].unique()) == 10 for v in fmnist.splits.values())
    again = FashionMNISTDataModule(root=str(DATA))
    again.setup()
    assert torch.equal(again.splits["val"][0], fmnist.splits["val"][0])
    other = FashionMNISTDataModule(root=str(DATA), split_seed=1)
    other.setup()
    assert not torch.equal(other.splits["val"][0], fmnist.splits["val"][0])


def test_fashion_mnist_from_the_debian_layout(tmp_path):
    # the Debian package's gzip files are decompressed into the data root and read back
    debian = tmp_path / "debian"
    debian.mkdir()
    raw = ensure_fashion_mnist(DATA)
    for pair in FILES.values():
        for f in pair:
            with open(raw / f, "rb") as src, gzip.open(debian / f"{f}.gz", "wb") as dst:
                dst.write(src.read())
    got = ensure_fashion_mnist(tmp_path / "root", debian_dir=debian, download=False)
    assert got == tmp_path / "root" / "FashionMNIST" / "raw"
    a, b = read_idx(got / FILES["test"][0]), read_idx(raw / FILES["test"][0])
    assert a.shape == (10000, 28, 28) and (a == b).all()


def test_fashion_mnist_missing_names_all_three_ways(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        ensure_fashion_mnist(tmp_path, debian_dir=tmp_path / "nope", download=False)
    msg = str(e.value)
    assert str(tmp_path / "FashionMNIST" / "raw") in msg
    assert "dataset-fashion-mnist" in msg and "download" in msg


def test_digits():
    dm = DigitsDataModule(val_size=150)
    dm.setup()
    sizes = {k: len(v[0]) for k, v in dm.splits.items()}
    assert sizes == {"train": 1350, "val": 150, "test": 297}
    x = dm.images("train")
    assert x.shape == (1350, 1, 8, 8) and x.min() == 0 and x.max() == 1


def test_dsprites_grid_and_factors():
    assert dsprites.N_IMAGES == 737_280 == 3 * 6 * 40 * 32 * 32
    idx = torch.arange(dsprites.N_IMAGES)
    f = dsprites.index_to_factors(idx)
    assert f.shape == (737_280, 5)
    assert [int(f[:, i].max()) + 1 for i in range(5)] == list(dsprites.FACTOR_SIZES)
    assert torch.equal(dsprites.factors_to_index(f), idx)
    # y is the fastest factor, shape the slowest, as in the original dataset
    assert f[1].tolist() == [0, 0, 0, 0, 1] and f[-1].tolist() == [2, 5, 39, 31, 31]


def test_dsprites_rendering():
    f = torch.tensor([[s, 5, 0, 16, 16] for s in range(3)])
    images = dsprites.render(f)
    assert images.shape == (3, 1, 64, 64) and images.dtype == torch.uint8
    assert set(images.unique().tolist()) == {0, 255}
    areas = (images > 0).flatten(1).sum(1)
    assert (areas > 50).all() and len(set(areas.tolist())) == 3  # three different shapes
    # scale grows the area, position moves the centroid
    small = dsprites.render(torch.tensor([[0, 0, 0, 16, 16]]))
    assert (small > 0).sum() < areas[0]
    moved = dsprites.render(torch.tensor([[0, 5, 0, 31, 16]]))
    cols = torch.arange(64).float()
    centroid = lambda im: ((im[0, 0] > 0).float().sum(0) * cols).sum() / (im[0, 0] > 0).sum()  # noqa: E731
    assert centroid(moved) > centroid(images[:1]) + 15
    # orientation 0 and 39 are both 0 (mod 2 pi): every shape repeats exactly, as in the original;
    # the heart has no rotational symmetry, so half a turn changes it
    ends = torch.tensor([[s, 3, o, 10, 20] for s in range(3) for o in (0, 39)])
    r = dsprites.render(ends)
    assert all(torch.equal(r[2 * s], r[2 * s + 1]) for s in range(3))
    heart = dsprites.render(torch.tensor([[2, 5, 0, 16, 16], [2, 5, 20, 16, 16]]))
    assert not torch.equal(heart[0], heart[1])
    # deterministic
    assert torch.equal(dsprites.render(f), images)


def test_dsprites_module_returns_factor_labels():
    dm = DSpritesDataModule(limit=64, batch_size=32)
    dm.setup()
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (32, 1, 64, 64) and y.shape == (32, 5)
    idx = dm.splits["train"][0]
    assert set(idx.tolist()).isdisjoint(dm.splits["test"][0].tolist())


def test_index_batches_shard_each_epoch_across_ranks():
    n, bs = 103, 10
    x = torch.arange(n)

    def fetch(i):
        return x[i].view(-1, 1, 1, 1).to(torch.uint8), x[i]

    epoch = [0]
    shards = [IndexBatches(fetch, n, bs, shuffle=True, seed=3, epoch=lambda: epoch[0], rank=r,
                           world_size=2, drop_last=True) for r in range(2)]
    seen = [torch.cat([y for _, y in s]) for s in shards]
    assert len(shards[0]) == len(shards[1]) == 5  # 51 per rank, whole batches only
    assert set(seen[0].tolist()).isdisjoint(seen[1].tolist())
    epoch[0] = 1
    assert not torch.equal(torch.cat([y for _, y in shards[0]]), seen[0])  # reshuffled per epoch
    # evaluation shards keep every item
    ev = [IndexBatches(fetch, n, bs, shuffle=False, rank=r, world_size=2) for r in range(2)]
    got = sorted(torch.cat([y for s in ev for _, y in s]).tolist())
    assert got == list(range(n))
    xb, _ = next(iter(ev[0]))
    assert xb.dtype == torch.float32 and float(xb.max()) <= 1.0


def test_bad_batch_size_names_the_key():
    from genlab.config import ConfigError

    with pytest.raises(ConfigError, match=r"data.batch_size=0 is invalid; allowed: a positive integer"):
        DigitsDataModule(batch_size=0)


def test_batch_larger_than_the_training_split_is_an_error():
    from genlab.config import ConfigError

    dm = DigitsDataModule(limit=50, batch_size=64, val_size=150)
    dm.setup()
    with pytest.raises(ConfigError, match="data.batch_size=64 is invalid; allowed: at most 50"):
        dm.train_dataloader()


def test_val_split_larger_than_the_data_is_an_error():
    from genlab.config import ConfigError

    with pytest.raises(ConfigError, match="data.val_size=5000 is invalid; allowed: fewer than the 1500"):
        DigitsDataModule(val_size=5000).setup()


# -- data.binarize -------------------------------------------------------------------------------


def _train_batches(dm):
    return torch.cat([x for x, _ in dm.train_dataloader()])


def test_binarize_static_is_one_fixed_draw_per_image():
    grey = DigitsDataModule(val_size=150)
    grey.setup()
    a, b = DigitsDataModule(val_size=150, binarize="static"), DigitsDataModule(val_size=150,
                                                                                binarize="static")
    a.setup(), b.setup()
    for split in ("train", "val", "test"):
        xa, g = a.splits[split][0], grey.splits[split][0]
        assert set(xa.unique().tolist()) <= {0, 255}
        assert torch.equal(xa, b.splits[split][0])  # seeded by split_seed, not by chance
        assert torch.equal(xa[g == 0], torch.zeros_like(xa[g == 0]))  # p = 0 never turns on
        assert torch.equal(xa[g == 255], torch.full_like(xa[g == 255], 255))  # p = 1 always does
    # the draw follows the grey level: pixels at p ~ 1/2 are on about half the time
    g, xa = grey.splits["train"][0], a.splits["train"][0]
    mid = (g > 100) & (g < 155)
    assert 0.4 < (xa[mid] == 255).float().mean() < 0.6
    # the same images every epoch
    e0, e1 = _train_batches(a), _train_batches(a)
    assert torch.equal(e0, e1) and set(e0.unique().tolist()) <= {0.0, 1.0}


def test_binarize_dynamic_draws_afresh_per_batch_and_keeps_eval_fixed():
    dm = DigitsDataModule(val_size=150, binarize="dynamic", batch_size=50)
    static = DigitsDataModule(val_size=150, binarize="static")
    dm.setup(), static.setup()
    grey = dm.splits["train"][0]
    assert len(grey.unique()) > 2  # training images stay grey; batches are drawn from them
    loader = dm.train_dataloader()
    first, again = torch.cat([x for x, _ in loader]), torch.cat([x for x, _ in loader])
    assert set(first.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(first, again)  # same seed, epoch and batch: the same draw (resume-exact)
    # a fresh draw per batch: over many epochs each pixel is on at its grey level's rate
    epoch = [0]
    batches = IndexBatches(dm.fetcher("train")[0], len(grey), 50, shuffle=False, binarize=True,
                           epoch=lambda: epoch[0])
    draws = []
    for epoch[0] in range(40):
        draws.append(torch.cat([x for x, _ in batches]))
    draws = torch.stack(draws)
    assert not torch.equal(draws[0], draws[1])
    rate = draws.mean(0)
    p = grey[: len(rate)].float() / 255
    assert (rate - p).abs().mean() < 0.05
    # validation and test: the static draw, identical in every epoch and in both modes
    for split in ("val", "test"):
        assert torch.equal(dm.splits[split][0], static.splits[split][0])


def test_binarize_bad_value_and_binary_sources():
    from genlab.config import ConfigError

    with pytest.raises(ConfigError, match=r"data.binarize='yes' is invalid; allowed: none \| static \| dynamic"):
        DigitsDataModule(binarize="yes")
    # dSprites is binary already: binarize changes nothing
    assert DSpritesDataModule(binarize="dynamic").binarize == "none"
