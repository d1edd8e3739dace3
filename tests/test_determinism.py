"""The same command gives the same numbers: an evaluation draws from its own seeded generators, so
the state of the FID feature cache (or an evaluation run mid-training) changes no value."""

from __future__ import annotations

import csv
import math

import torch

from genlab import runs
from genlab.seeding import generator_for, mix_seed

# keys that name the run rather than describe its numbers
RUN_SPECIFIC = {"best_checkpoint", "git_commit", "resumed_from"}


def _rows(run):
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def _numbers(run) -> dict:
    s = runs.read_summary(run)
    return {k: v for k, v in s.items() if k not in RUN_SPECIFIC}


def test_cold_and_warm_feature_cache_give_identical_runs(smoke, tmp_path):
    """Run 1 computes the real features (cache miss), run 2 reads them; an evaluation runs after
    every epoch, so a difference would show in every later training step too."""
    cache = tmp_path / "cache"
    args = ("data=digits", "trainer.deterministic=true", "trainer.max_epochs=2",
            "metrics.every_n_epochs=1", f"paths.cache_dir={cache}")
    cold = smoke(tmp_path / "cold", *args)
    assert list(cache.glob("*.npz")), "the first run should have written the real features"
    warm = smoke(tmp_path / "warm", *args)

    a, b = _numbers(cold), _numbers(warm)
    assert a["status"] == "ok"
    for key in ("val/fid", "val/fid_expost", "val/mmd_prior", "test/elbo", "test/loglik", "val/elbo"):
        assert isinstance(a[key], float) and math.isfinite(a[key]), key
    assert a == b
    rows_cold, rows_warm = _rows(cold), _rows(warm)
    assert len(rows_cold) > 4 and any(r.get("val/fid") for r in rows_cold)
    assert rows_cold == rows_warm


def test_mix_seed_separates_its_parts():
    seeds = {mix_seed(0, "val", 0, 1), mix_seed(0, "val", 1, 0), mix_seed(0, "test", 0, 1),
             mix_seed(1, "val", 0, 1), mix_seed(0, "val", 0, 10), mix_seed(0, "val", 0, 1, 0)}
    assert len(seeds) == 6
    assert mix_seed(3, "generate", 2) == mix_seed(3, "generate", 2)
    for s in seeds:  # usable by torch, numpy's RandomState and scikit-learn alike
        assert 0 <= s < 2**32
        torch.Generator().manual_seed(s)


def test_generator_for_is_independent_of_the_global_stream():
    torch.manual_seed(0)
    a = torch.randn(5, generator=generator_for(7, "test", 0, 3))
    torch.manual_seed(123)
    torch.randn(100)
    before = torch.get_rng_state()
    b = torch.randn(5, generator=generator_for(7, "test", 0, 3))
    assert torch.equal(a, b)
    assert torch.equal(before, torch.get_rng_state())  # the global stream did not move


def test_an_evaluation_mid_training_leaves_the_training_stream_alone(smoke, tmp_path):
    """The same run with an evaluation after every epoch and with none before the final one:
    every training and validation value is the same, so the evaluation drew nothing from the
    training stream."""
    args = ("data=digits", "trainer.deterministic=true", "trainer.max_epochs=2",
            f"paths.cache_dir={tmp_path / 'cache'}")
    every = _rows(smoke(tmp_path / "every", *args, "metrics.every_n_epochs=1"))
    final = _rows(smoke(tmp_path / "final", *args, "metrics.every_n_epochs=0"))

    def training(rows):
        keep = ("step", "epoch", "train/loss", "train/elbo", "val/elbo", "test/elbo", "test/loglik")
        return [{k: r.get(k, "") for k in keep} for r in rows if any(r.get(k) for k in keep[2:])]

    def evaluations(rows):
        return sum(bool(r.get("val/fid")) for r in rows)

    assert (evaluations(every), evaluations(final)) == (2 + 1, 1)  # per epoch + the final one
    assert len(training(every)) > 4 and training(every) == training(final)
