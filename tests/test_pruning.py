"""Pruned Optuna searches on real tiny runs: runs report to the study through its storage, the
median pruner stops a hopeless trial (a learning rate too small to learn anything), the run ends
with status pruned in its summary and the manifest, the trial is PRUNED in the study, the sweep
does not fail on it, a resumed search neither re-runs nor loses it, and genlab-report counts it
apart."""

from __future__ import annotations

import csv
import json

import optuna
import pytest
from conftest import run_cli

from genlab import report, runs
from genlab.callbacks.pruning import make_pruner
from genlab.config import ConfigError
from genlab.search import open_storage
from genlab.sweep import read_manifest

GOOD, HOPELESS = 0.003, 1e-06
EPOCHS = 3
SEARCH = (
    "hparams_search=vae_elbo", "debug=smoke", "data=digits", "logger=csv",
    "callbacks.evaluation=null", f"trainer.max_epochs={EPOCHS}",
    # one swept key, the learning rate, good or hopeless; with this seed the sampler's first
    # draws are good, hopeless, good, hopeless (checked below, not assumed)
    "model.latent_dim=8", "model.objective.beta=1.0", f"model.lr=choice({GOOD},{HOPELESS})",
    "hydra.sweeper.sampler.seed=1240",
    # prune from the first epoch on, once one trial has finished
    "callbacks.pruning.pruner=median",
    "callbacks.pruning.pruner_args={n_startup_trials: 1, n_warmup_steps: 0}",
)
State = optuna.trial.TrialState


def val_curve(run_dir) -> dict[int, float]:
    """val/elbo by epoch of training, as the run logged it to metrics.csv (without the final
    validation of the best checkpoint, logged as epoch EPOCHS)."""
    with open(run_dir / "metrics.csv") as f:
        return {int(r["epoch"]): float(r["val/elbo"]) for r in csv.DictReader(f)
                if r.get("val/elbo") and int(r["epoch"]) < EPOCHS}


def test_hopeless_trials_are_pruned_kept_on_resume_and_counted_apart(tmp_path):
    proc = run_cli(*SEARCH, "hydra.sweeper.n_trials=4", f"paths.log_dir={tmp_path}",
                   cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]  # pruned runs are not failures
    (sweep,) = (tmp_path / "vae_elbo_search" / "multiruns").iterdir()
    storage = open_storage(sweep / "optuna.journal")
    trials = optuna.load_study(study_name="vae_elbo_search", storage=storage).trials
    assert [t.params["model.lr"] for t in trials] == [GOOD, HOPELESS, GOOD, HOPELESS]
    manifest = read_manifest(sweep)

    for t in trials:
        run = sweep / str(t.number)
        summary = runs.read_summary(run)
        # every validation of the run reached the study, with the value the run logged
        assert t.intermediate_values == pytest.approx(val_curve(run))
        if t.params["model.lr"] == GOOD:
            assert t.state == State.COMPLETE and summary["status"] == "ok"
            assert sorted(t.intermediate_values) == list(range(EPOCHS))
            assert t.value == summary["val/elbo"]
        else:  # worse than the finished good trial at epoch 0: stopped there
            assert t.state == State.PRUNED, t
            assert summary["status"] == "pruned" and "pruned by optuna (median)" in summary["error"]
            assert sorted(t.intermediate_values) == [0] and summary["epochs"] == 0
            assert "test/elbo" not in summary  # no final test of a pruned run
            assert t.value == t.intermediate_values[0]  # optuna's value of a pruned trial
        assert manifest[str(t.number)]["status"] == summary["status"]
    assert "2 of 4 runs ok, 2 pruned" in proc.stdout

    # resumed with one more trial: the pruned trials stay pruned, their runs untouched, and
    # only the new trial runs, in a folder numbered after the old ones
    before = {n: (sweep / n / "summary.json").read_bytes() for n in ("1", "3")}
    run_cli(*SEARCH, "hydra.sweeper.n_trials=5", "resume=true", f"paths.log_dir={tmp_path}",
            cwd=tmp_path)
    resumed = optuna.load_study(study_name="vae_elbo_search", storage=storage).trials
    assert len(resumed) == 5
    assert [t.state for t in resumed[:4]] == [t.state for t in trials]
    assert resumed[4].state in (State.COMPLETE, State.PRUNED)
    assert {n: (sweep / n / "summary.json").read_bytes() for n in ("1", "3")} == before
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1", "2", "3", "4"]

    # genlab-report counts pruned runs apart and never averages them
    out = tmp_path / "report"
    assert report.main([str(sweep), "--out", str(out), "--metrics", "val/elbo"]) == 0
    with open(out / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    pruned = sum(t.state == State.PRUNED for t in resumed)
    assert sum(int(r["n_pruned"]) for r in rows) == pruned >= 2
    assert sum(int(r["n_failed"]) for r in rows) == 0
    for r in rows:
        if int(r["n_ok"]) == 0:  # a configuration whose runs were all pruned has no mean
            assert r["val/elbo mean"] == ""
    assert f"pruned {pruned}" in (out / "summary.md").read_text()
    # the search's own figures, drawn by Optuna from the study
    for kind in ("history", "importances"):
        png = out / f"search_{kind}_vae_elbo_search.png"
        assert png.stat().st_size > 10_000 and f"]({png.name})" in (out / "summary.md").read_text()
    assert json.loads((sweep / "manifest.json").read_text())["runs"]["4"]["status"] in (
        "ok", "pruned")


def test_pruner_choice_is_checked_in_one_line():
    assert make_pruner("none", None) is None
    assert isinstance(make_pruner("median", {"n_warmup_steps": 2}), optuna.pruners.MedianPruner)
    assert isinstance(make_pruner("successive_halving", None),
                      optuna.pruners.SuccessiveHalvingPruner)
    with pytest.raises(ConfigError, match=r"callbacks.pruning.pruner='medain' is invalid; "
                                          r"allowed: none \| median"):
        make_pruner("medain", None)
    with pytest.raises(ConfigError, match=r"callbacks.pruning.pruner_args=.*n_warmup_step.* is "
                                          r"invalid for pruner=median"):
        make_pruner("median", {"n_warmup_step": 2})


def test_unknown_pruner_stops_the_search_before_training(tmp_path):
    proc = run_cli(*SEARCH, "hydra.sweeper.n_trials=1", "callbacks.pruning.pruner=medain",
                   f"paths.log_dir={tmp_path}", cwd=tmp_path, check=False)
    (sweep,) = (tmp_path / "vae_elbo_search" / "multiruns").iterdir()
    summary = runs.read_summary(sweep / "0")
    assert summary["status"] == "failed" and "global_step" not in summary
    assert "callbacks.pruning.pruner='medain' is invalid" in summary["error"]
    assert proc.returncode == 1


def test_resume_settles_trials_whose_runs_ended_before_the_sweeper_told_them(tmp_path):
    # the sweeper was killed after its runs ended but before it told Optuna: runs 0 (pruned) and
    # 1 (ok) are settled from the manifest, run 2 (cut off mid-run) is asked again
    from omegaconf import OmegaConf

    from genlab.sweep import update_manifest
    from hydra_plugins.genlab_plugins import RUN_ATTR, ResumableOptunaSweeper

    storage = open_storage(tmp_path / "optuna.journal")
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    for i, (status, objective) in enumerate([("pruned", None), ("ok", -40.5), ("running", None)]):
        trial = study.ask()
        trial.suggest_float("model.lr", 1e-4, 1e-2)
        trial.set_user_attr(RUN_ATTR, i)
        if status == "pruned":
            trial.report(-50.0, step=0)
        entry = {"status": status}
        if objective is not None:
            entry["objective"] = {"val/elbo": objective}
        update_manifest(tmp_path, str(i), entry)
    sweeper = ResumableOptunaSweeper(direction="maximize", storage=str(tmp_path / "optuna.journal"),
                                     study_name="s", n_trials=5)
    sweeper.config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    assert sweeper._resume(optuna.load_study(study_name="s", storage=storage)) == 2
    trials = optuna.load_study(study_name="s", storage=storage).trials
    assert [t.state for t in trials] == [State.PRUNED, State.COMPLETE, State.FAIL, State.WAITING]
    assert trials[0].value == -50.0 and trials[1].value == -40.5
    # only the cut-off run is asked again (an enqueued trial holds its params until asked)
    assert trials[3].system_attrs["fixed_params"] == trials[2].params
    assert sweeper.job_idx == 3  # new runs are numbered after the old ones
