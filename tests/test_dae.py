"""Denoising auto-encoder: real tiny trainings through genlab-train's `train(cfg)` (with walkback),
the Markov chain's shape and range, genlab-sample's chain modes, and checkpoint-safe corruption
configs."""

import csv
import json
import math

import pytest
import torch
from conftest import NO_EVAL
from PIL import Image

from genlab.config import ConfigError
from genlab.corruption import Corruption, as_corruption
from genlab.models.common import triplets
from genlab.models.dae import DAE
from genlab.sample import main as sample_main

SHAPE = [1, 28, 28]





DAE_RUNS = [  # the first keeps the sample-quality callback on: it must work with the DAE's chain
    ("gaussian", ["model.likelihood=gaussian", "model.objective.walkback=2", "model.chain_draw=sample"]),
    ("masking", ["model.objective.walkback=1", "corruption.level_range=[0.1,0.5]", *NO_EVAL]),
]


@pytest.mark.parametrize(("corruption", "extra"), DAE_RUNS, ids=[c for c, _ in DAE_RUNS])
def test_dae_trains_and_samples_chains(smoke, tmp_path, corruption, extra):
    run = smoke(tmp_path / "run", "model=dae", f"corruption={corruption}",
                "objective.metric=val/recon", "objective.mode=max", "model.net.base_channels=8",
                "model.code_dim=16", "model.chain_steps=5", *extra)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "ok", summary
    assert math.isfinite(summary["val/recon"]) and math.isfinite(summary["test/recon"])
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    recon = [float(r["train/recon"]) for r in rows if r.get("train/recon")]
    levels = [float(r["train/corruption_level"]) for r in rows if r.get("train/corruption_level")]
    assert recon and all(math.isfinite(v) for v in recon)
    assert levels and all(v > 0 for v in levels)
    names = {p.name for p in (run / "samples").glob("*_final.png")}
    assert {"chain_final.png", "chain_data_final.png", "denoising_final.png"} <= names

    ckpt = run / "checkpoints" / "last.ckpt"
    n, steps, tile = 3, 4, 28 + 2  # save_image pads each tile by 2 pixels
    for mode in ("chain", "chain_data"):
        out = tmp_path / f"{mode}.png"
        sample_main([f"ckpt={ckpt}", f"mode={mode}", f"n={n}", f"steps={steps}", f"out={out}"])
        size = Image.open(out).size
        if mode == "chain":  # genlab-sample lays `chain` out with rows = chains, columns = steps
            assert size == (steps * tile + 2, n * tile + 2)
        else:  # n * steps tiles; the row width is genlab-sample's choice
            assert ((size[0] - 2) // tile) * ((size[1] - 2) // tile) == n * steps
    sample_main([f"ckpt={ckpt}", "n=16", f"out={tmp_path / 'prior.png'}"])
    assert (tmp_path / "prior.png").stat().st_size > 0


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
@pytest.mark.parametrize("chain_draw", ["mean", "sample"])
def test_chain_is_images_in_unit_range(likelihood, chain_draw):
    torch.manual_seed(0)
    model = DAE(SHAPE, corruption=Corruption("gaussian", 0.3), likelihood=likelihood, chain_draw=chain_draw,
                code_dim=8, net={"name": "conv", "base_channels": 8}, chain_steps=3).eval()
    x0 = torch.rand(5, *SHAPE)
    chain = model.chain(x0, 6)
    assert chain.shape == (5, 6, *SHAPE)
    assert chain.min() >= 0 and chain.max() <= 1
    if likelihood == "bernoulli":  # (an untrained Gaussian decoder's means may all clamp to 0)
        assert not torch.equal(chain[:, 0], chain[:, -1])  # the chain moves
    x = model.generate(7)
    assert x.shape == (7, *SHAPE) and x.min() >= 0 and x.max() <= 1
    if chain_draw == "sample" and likelihood == "bernoulli":  # a draw is binary; grids show means
        assert set(model.draw(torch.randn(4, *SHAPE)).unique().tolist()) <= {0.0, 1.0}


def test_walkback_adds_terms_from_the_chain():
    torch.manual_seed(0)
    model = DAE(SHAPE, corruption=Corruption("masking", 0.5), code_dim=8, net={"name": "conv", "base_channels": 8})
    x = torch.rand(6, *SHAPE)
    terms = model.recon_terms(x, walkback=3)
    assert len(terms) == 4 and all(t.shape == (6,) and torch.isfinite(t).all() for t in terms)
    assert not torch.equal(terms[0], terms[1])  # a different (chain) input, the same clean target
    loss = -torch.stack(terms).mean()
    loss.backward()
    assert model.encoder.net[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize(("kwargs", "key"), [
    ({"chain_draw": "mode"}, "model.chain_draw="),
    ({"objective": {"name": "denoise", "walkback": -1}}, "model.objective.walkback="),
    ({"likelihood": "laplace"}, "model.likelihood="),
    ({"corruption": {"kind": "blur", "level": 1.0, "schedule": {"kind": "adaptive"}}},
     "corruption.schedule.kind="),
    ({"corruption": "gaussian"}, "model.corruption="),
])
def test_bad_options_name_their_key(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        DAE(SHAPE, **kwargs)


@pytest.mark.parametrize("config", [
    {"kind": "gaussian", "level": 0.2, "clip": True},
    {"kind": "masking", "level": 0.1, "level_range": [0.0, 0.4]},
    {"kind": "blur", "level": 2.0, "schedule": {"kind": "linear", "images": 500}},
    {"kind": "salt_pepper", "level": 0.3, "schedule": {"kind": "cosine", "images": 50}},
    {"kind": "blur", "level": 0.0, "schedule": {"kind": "adaptive", "target": 0.7}},
    {"kind": "rotate_crop", "level": 45.0, "radius": 0.4,
     "schedule": {"kind": "adaptive", "target": 0.6, "step": 3.0}},
])
def test_corruption_config_round_trips(config):
    """What a checkpoint stores rebuilds the same corruption (same draws, same schedule)."""
    c = Corruption(**config)
    saved = c.config()
    assert json.loads(json.dumps(saved)) == saved  # plain values only: safe for weights_only loads
    again = as_corruption(saved)
    assert repr(again) == repr(c) and again.config() == saved
    for images in (0, 30, 10_000):
        c.images_seen = again.images_seen = images
        assert again.current_level == c.current_level
    x = torch.rand(4, *SHAPE)
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    assert torch.equal(c(x, generator=g()), again(x, generator=g()))


def test_triplets_fill_whole_rows():
    a, b, c = (torch.full((16, 1, 2, 2), v) for v in (0.0, 1.0, 2.0))
    t = triplets(a, b, c)
    assert len(t) == 36  # 12 triples; a 6-wide grid holds 2 whole triples per row
    assert t[:6, 0, 0, 0].tolist() == [0.0, 1.0, 2.0, 0.0, 1.0, 2.0]
