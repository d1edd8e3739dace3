"""Multiruns as a user runs them: parallel launchers, failure isolation, resuming, Optuna, DDP,
the SLURM preset (on submitit's local executor), the manifest under concurrent writers, and a
report of a real sweep."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import BIN, DATA, run_cli

from genlab import report, runs
from genlab.search import open_storage
from genlab.sweep import RunRefused, read_manifest, same_configuration, update_manifest

SMOKE = ("debug=smoke", "data=digits", "logger=csv")


def sweep_dir(log_dir: Path, task: str = "train") -> Path:
    (d,) = (log_dir / task / "multiruns").iterdir()
    return d


def statuses(sweep: Path) -> dict[str, str]:
    return {k: v["status"] for k, v in read_manifest(sweep).items()}


def test_joblib_sweep_isolates_failures_and_resumes(tmp_path):
    # four runs on two local workers: one ok, one failing on a bad value, one diverging (a huge
    # learning rate), one both; every run has its own folder and the sweep goes on to the end
    args = ("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *SMOKE,
            "model.lr=1e-3,1e12", "data.val_size=150,5000", f"paths.log_dir={tmp_path}")
    proc = run_cli(*args, cwd=tmp_path, check=False)
    assert proc.returncode == 1, proc.stderr[-2000:]  # the exit code says some runs failed
    sweep = sweep_dir(tmp_path)
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1", "2", "3"]
    assert statuses(sweep) == {"0": "ok", "1": "failed", "2": "diverged", "3": "failed"}
    failed = runs.read_summary(sweep / "1")
    assert "data.val_size=5000 is invalid" in failed["error"]
    assert "training loss non-finite" in runs.read_summary(sweep / "2")["error"]
    assert "run 2 diverged" in proc.stderr and "1 of 4 runs ok" in proc.stdout

    # an interrupted run: its summary still says running and it has a checkpoint
    ok_mtime = (sweep / "0" / "summary.json").stat().st_mtime_ns
    run_cli("debug=smoke", "data=digits", "logger=csv", "model.lr=1e-3", "data.val_size=150",
            "trainer.max_epochs=1", f"paths.log_dir={tmp_path}", f"hydra.run.dir={sweep / 'x'}",
            cwd=tmp_path)
    (sweep / "0" / "checkpoints" / "last.ckpt").replace(sweep / "0" / "keep.ckpt")
    interrupted = runs.read_summary(sweep / "0")
    (sweep / "0" / "keep.ckpt").replace(sweep / "0" / "checkpoints" / "last.ckpt")
    runs.write_summary(sweep / "0", {**interrupted, "status": "running"})
    proc = run_cli(*args, "resume=true", cwd=tmp_path, check=False)
    assert proc.returncode == 1
    assert len(list((tmp_path / "train" / "multiruns").iterdir())) == 1  # the same sweep folder
    resumed = runs.read_summary(sweep / "0")
    assert resumed["status"] == "ok"
    assert resumed["resumed_from"].endswith("0/checkpoints/last.ckpt")
    assert (sweep / "0" / "summary.json").stat().st_mtime_ns != ok_mtime

    # once everything that can finish has finished, resume skips the ok runs
    before = (sweep / "0" / "summary.json").stat().st_mtime_ns
    proc = run_cli(*args, "resume=true", cwd=tmp_path, check=False)
    assert "already finished ok; skipping it" in proc.stderr + proc.stdout
    assert (sweep / "0" / "summary.json").stat().st_mtime_ns == before

    # Resumed with another grid, job 0 means another setting (lr 1e-4, not 1e-3): folder 0 is
    # not taken for it. The attempt is refused and counted as failed in the manifest, and the
    # folder keeps its own run: summary, metrics and Hydra's record of its config.
    changed = [a.replace("model.lr=1e-3,", "model.lr=1e-4,") for a in args]
    kept = {f: (sweep / "0" / f).read_bytes() for f in ("summary.json", "metrics.csv")}
    proc = run_cli(*changed, "resume=true", cwd=tmp_path, check=False)
    assert proc.returncode == 1
    entry = read_manifest(sweep)["0"]
    assert entry["status"] == "failed" and "model.lr: 0.001 -> 0.0001" in entry["error"]
    assert {f: (sweep / "0" / f).read_bytes() for f in kept} == kept
    assert "model.lr=0.001" in (sweep / "0" / ".hydra" / "overrides.yaml").read_text()
    assert "lr: 0.001" in (sweep / "0" / ".hydra" / "config.yaml").read_text()
    # the grid it started with resumes as before
    proc = run_cli(*args, "resume=true", cwd=tmp_path, check=False)
    assert statuses(sweep)["0"] == "ok"

    # the report reads the sweep: failed runs counted apart, not averaged
    out = tmp_path / "report"
    assert report.main([str(sweep), "--out", str(out), "--metrics", "val/elbo"]) == 0
    table = (out / "summary.csv").read_text()
    assert "n_failed" in table and "n_diverged" in table
    assert (out / "summary.md").is_file()


def test_a_run_folder_keeps_one_configuration(tmp_path):
    """What genlab.sweep.same_configuration does at each kind of attempt, on Hydra's files."""
    run = tmp_path / "0"
    (run / ".hydra").mkdir(parents=True)

    def attempt(kind, lr, resume=True, callbacks=None):  # Hydra rewrites .hydra/ every time
        config = {"seed": 0, "model": {"lr": lr}, "callbacks": callbacks or {}, "resume": resume,
                  "paths": {"log_dir": str(tmp_path)}}
        (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
        (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"model.lr={lr}"]))
        same_configuration(run, kind)

    def saved_lr():
        return yaml.safe_load((run / ".hydra" / "config.yaml").read_text())["model"]["lr"]

    attempt("start", 1e-3, resume=False, callbacks={"kill": {"step": 12}})
    # continuing from last.ckpt: how it trains may change (here a callback), what it trains not
    attempt("continue", 1e-3)
    with pytest.raises(RunRefused, match=r"model\.lr: 0\.001 -> 0\.01\)"):
        attempt("continue", 1e-2)
    assert saved_lr() == 1e-3
    # skipping the finished run: the whole config must be its own (resume=true aside)
    attempt("skip", 1e-3)
    with pytest.raises(RunRefused, match=r"callbacks\.kill\.step: \(unset\) -> 12\)"):
        attempt("skip", 1e-3, callbacks={"kill": {"step": 12}})
    with pytest.raises(RunRefused, match=r"model\.lr: 0\.001 -> 0\.0001\)"):
        attempt("skip", 1e-4)
    assert saved_lr() == 1e-3
    assert yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text()) == ["model.lr=0.001"]
    # a fresh start (a failed run started again) is a new run: anything goes, and it is recorded
    attempt("start", 1e-4)
    attempt("skip", 1e-4)

    # a folder from before the check has no copy: it cannot be checked, and is not
    shutil.rmtree(run / ".hydra" / "started")
    attempt("skip", 1e-2)
    assert not (run / ".hydra" / "started").exists()


# slow (68 s): tests/test_pruning.py resumes an Optuna search in CI
@pytest.mark.slow
def test_optuna_search_interrupted_and_resumed(tmp_path):
    args = ["hparams_search=vae_elbo", "hydra.sweeper.n_trials=4", *SMOKE, f"paths.log_dir={tmp_path}"]
    cmd = [str(BIN / "genlab-train"), *args, f"paths.data_dir={DATA}"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:  # interrupt the search once two trials have finished
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            base = tmp_path / "vae_elbo_search" / "multiruns"
            sweeps = list(base.iterdir()) if base.is_dir() else []
            if sweeps and list(statuses(sweeps[0]).values()).count("ok") >= 2:
                break
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    sweep = sweep_dir(tmp_path, "vae_elbo_search")
    storage = open_storage(sweep / "optuna.journal")
    study = optuna.load_study(study_name="vae_elbo_search", storage=storage)
    done_before = [t for t in study.trials if t.state.is_finished()]
    # the kill can fall after a run ended ok but before its trial was told: resume settles that
    # trial from the manifest (checked below: its value is its run's), it does not run it again
    assert 1 <= len(done_before) < 4

    run_cli(*args, "resume=true", cwd=tmp_path)
    study = optuna.load_study(study_name="vae_elbo_search", storage=storage)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 4  # the search finished where it stopped, not from scratch
    assert [t.params for t in done_before] == [t.params for t in complete[: len(done_before)]]
    # objectives come from the runs' summaries
    for t in complete:
        assert t.value == runs.read_summary(sweep / str(t.number))["val/elbo"]


def test_failed_runs_are_failed_trials(tmp_path):
    run_cli("hparams_search=vae_elbo", "hydra.sweeper.n_trials=2", *SMOKE, "data.val_size=5000",
            f"paths.log_dir={tmp_path}", cwd=tmp_path, check=False)
    sweep = sweep_dir(tmp_path, "vae_elbo_search")
    study = optuna.load_study(study_name="vae_elbo_search", storage=open_storage(sweep / "optuna.journal"))
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL] * 2
    assert all(t.value is None for t in study.trials)


def test_ddp_multirun_has_one_directory_and_one_wandb_run_per_job(tmp_path):
    run_cli("-m", "debug=smoke", "data=digits", "trainer=ddp_cpu", "seed=0,1",
            f"paths.log_dir={tmp_path}", cwd=tmp_path)
    assert [p.name for p in (tmp_path / "train").iterdir()] == ["multiruns"]  # no stray run dirs
    sweep = sweep_dir(tmp_path)
    found = runs.find_runs(tmp_path)
    assert [p.name for p in found] == ["0", "1"]
    for run in found:
        s = runs.read_summary(run)
        # smoke: 4 batches per epoch in each process, 2 epochs (one shared step counter)
        assert s["status"] == "ok" and s["global_step"] == 8
        assert len(list((run / "wandb").glob("offline-run-*"))) == 1
        overrides = (run / ".hydra" / "overrides.yaml").read_text()
        assert f"seed={run.name}" in overrides
    assert statuses(sweep) == {"0": "ok", "1": "ok"}


# slow (37 s): tests/test_slurm.py runs the preset on a real SLURM in CI
@pytest.mark.slow
def test_slurm_preset_on_the_local_executor(tmp_path):
    run_cli("-m", "hydra/launcher=slurm", "hydra.launcher.cluster=local", "hydra.launcher.cpus_per_task=1",
            "hydra.launcher.timeout_min=10", "hydra.launcher.partition=gpu", *SMOKE, "seed=0,1",
            f"paths.log_dir={tmp_path}", cwd=tmp_path, timeout=400)
    sweep = sweep_dir(tmp_path)
    assert statuses(sweep) == {"0": "ok", "1": "ok"}
    assert (sweep / ".submitit").is_dir()  # it really went through submitit


def _hammer(sweep: str, worker: int, n: int) -> None:
    for i in range(n):
        update_manifest(sweep, f"{worker}-{i}", {"status": "ok", "worker": worker})


def test_concurrent_manifest_writers_lose_nothing(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_hammer, args=(str(tmp_path), w, 150)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    manifest = json.loads((tmp_path / "manifest.json").read_text())["runs"]
    assert len(manifest) == 450
