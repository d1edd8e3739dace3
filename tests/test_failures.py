"""Failures are named, not crashed through: an exploding run ends `diverged` in one line, and a
metric that cannot be computed is NaN with its reason in summary.json while the run goes on."""

from __future__ import annotations

import csv
import math
import re

import pytest
import torch
from conftest import run_cli

from genlab import runs
from genlab.callbacks.guard import DivergedError, DivergenceGuard
from genlab.config import ConfigError


def test_an_exploding_learning_rate_ends_the_run_as_diverged(tmp_path):
    """lr=1e6 gives huge but finite losses: the bound on |loss| stops the run in its first epoch,
    with one line on the console, before any evaluation."""
    proc = run_cli("debug=smoke", "data=digits", "logger=csv", "model.lr=1e6",
                   f"paths.log_dir={tmp_path}", cwd=tmp_path, check=False)
    (run,) = runs.find_runs(tmp_path)
    s = runs.read_summary(run)
    assert s["status"] == "diverged", s
    assert "max_abs_loss" in s["error"] and "\n" not in s["error"]
    assert s["global_step"] <= 4  # the first epoch (smoke: 4 steps) did not end
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out
    (line,) = [ln for ln in out.splitlines() if "run diverged" in ln]
    assert "max_abs_loss=1e+08" in line
    assert not list(run.glob("checkpoints/best-*")) and "val/fid" not in s


class _Trainer:
    """What the guard reads of a Trainer: 10 training batches per epoch."""

    def __init__(self, step):
        self.global_step, self.world_size, self.num_training_batches = step, 1, 10


def test_guard_catches_non_finite_parameters_and_spares_a_healthy_step():
    net = torch.nn.Linear(3, 2)
    guard = DivergenceGuard(every_n_steps=2, max_abs_loss=100.0)
    guard.on_train_batch_end(_Trainer(1), net, torch.tensor(99.0), None, 0)  # not a check step
    guard.on_train_batch_end(_Trainer(2), net, {"loss": torch.tensor(-99.0)}, None, 1)
    # an exploding loss at a step between checks is still caught at the next check
    guard.on_train_batch_end(_Trainer(3), net, torch.tensor(1e3), None, 2)
    with pytest.raises(DivergedError, match="max_abs_loss=100 by step 4"):
        guard.on_train_batch_end(_Trainer(4), net, torch.tensor(1.0), None, 3)
    with torch.no_grad():
        net.weight[0, 0] = math.inf
    guard.on_train_batch_end(_Trainer(5), net, torch.tensor(1.0), None, 4)  # not a check step
    # the last batch of an epoch is always checked: its validation and checkpoint come next
    with pytest.raises(DivergedError, match="non-finite parameters at step 7"):
        guard.on_train_batch_end(_Trainer(7), net, torch.tensor(1.0), None, 9)
    with pytest.raises(ConfigError, match="callbacks.guard.max_abs_loss"):
        DivergenceGuard(max_abs_loss=0)


def test_a_failed_mixture_fit_is_nan_with_its_reason_and_the_run_goes_on(smoke, tmp_path):
    """Without covariance regularisation, a mixture with as many components as codes has
    singular covariances: scikit-learn's fit fails on the run's real codes. val/fid_expost is NaN,
    summary.json says why, every other metric is computed and the run ends ok."""
    run = smoke(tmp_path / "run", "data=digits", "metrics.latent.expost_reg_covar=0",
                "metrics.latent.expost_components=200", "metrics.latent.subset=100")
    s = runs.read_summary(run)
    assert s["status"] == "ok"
    assert s["val/fid_expost"] == "nan"  # JSON has no NaN: runs.write_summary spells it
    reason = s["metric_errors"]["val/fid_expost"]
    assert reason.startswith("final validation: ValueError") and "\n" not in reason
    assert "covariance" in reason
    assert set(s["metric_errors"]) == {"val/fid_expost"}
    for key in ("val/fid", "val/kid", "val/mmd_prior", "val/kl_aggregate", "test/elbo"):
        assert math.isfinite(s[key]), key
    with open(run / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val/fid")]
    assert rows and all(math.isnan(float(r["val/fid_expost"])) for r in rows)


def test_an_aggregate_kl_the_codes_cannot_tell_is_nan_with_its_bracket(smoke, tmp_path):
    """val/kl_aggregate is logged only where its two estimates agree to metrics.latent.kl_max_gap
    (genlab.metrics.prior.kl_aggregate_posterior); beyond it, NaN and the bracket in the summary."""
    run = smoke(tmp_path / "run", "data=digits", "metrics.latent.kl_max_gap=1e-9")
    s = runs.read_summary(run)
    assert s["status"] == "ok" and s["val/kl_aggregate"] == "nan"
    reason = s["metric_errors"]["val/kl_aggregate"]
    assert re.fullmatch(r"final validation: ValueError: 200 codes in 16 dimensions cannot tell the "
                        r"aggregate KL: the leave-one-out and in-sample estimates bracket it at "
                        r"\[\S+, \S+\] nats, wider than 1e-09", reason), reason
    assert set(s["metric_errors"]) == {"val/kl_aggregate"} and math.isfinite(s["val/mmd_prior"])
