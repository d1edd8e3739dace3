"""A run killed with SIGTERM mid-epoch (SLURM preemption) leaves a checkpoint, and the resumed run
ends with exactly the metrics of an uninterrupted run with the same seed."""

from __future__ import annotations

import csv
import os
import subprocess
from pathlib import Path

import torch
from conftest import BIN, DATA

from genlab import runs

TESTS = Path(__file__).parent
# debug=smoke keeps 256 training images: 8 batches of 32 per epoch, 24 steps in 3 epochs
ARGS = ["debug=smoke", "data=digits", "logger=csv", "trainer.deterministic=true",
        "trainer.limit_train_batches=null", "trainer.max_epochs=3", "callbacks.samples=null", "seed=7"]


def train(run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    return subprocess.run([str(BIN / "genlab-train"), *ARGS, *extra, f"hydra.run.dir={run_dir}",
                           f"paths.data_dir={DATA}"], env=env, capture_output=True, text=True,
                          timeout=300, cwd=run_dir.parent)


def test_sigterm_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path):
    whole = tmp_path / "whole"
    assert train(whole).returncode == 0
    ref = runs.read_summary(whole)

    cut = tmp_path / "cut"
    proc = train(cut, "+callbacks.kill._target_=sigterm_at.SigtermAt", "+callbacks.kill.step=12")
    assert proc.returncode == 143  # 128 + SIGTERM, as a shell reports it
    s = runs.read_summary(cut)
    assert s["status"] == "interrupted" and s["global_step"] == 12
    state = torch.load(cut / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 12 and state["epoch"] == 1  # mid-epoch: 4 of 8 batches

    proc = train(cut)  # the same run again: it finds last.ckpt and continues
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = runs.read_summary(cut)
    assert resumed["status"] == "ok" and resumed["resumed_from"].endswith("last.ckpt")
    assert resumed["global_step"] == ref["global_step"] == 24
    for key in ("val/elbo", "test/elbo", "val/kl", "test/loglik"):
        assert resumed[key] == ref[key], key
    # nothing logged before the interruption is lost: every step's training loss is there once
    with open(cut / "metrics.csv") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")]
    assert steps == list(range(24))


def test_last_checkpoint_is_the_newest_state_after_an_epoch_that_did_not_improve(tmp_path):
    # mode=min on the ELBO makes the first epoch the best, so the later epochs save no best
    # checkpoint; last.ckpt (what a killed run continues from) must still be the end of training
    run = tmp_path / "run"
    proc = train(run, "objective.mode=min")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = runs.read_summary(run)
    assert summary["best_checkpoint"].endswith("best-epoch000.ckpt")
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best-epoch000.ckpt", "last.ckpt"]
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == summary["global_step"] == 24
