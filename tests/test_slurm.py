"""The SLURM launcher on a real one-node cluster (tests/slurm_cluster.py starts it; skipped where
that cannot be done, with the reason): a job requeued by `scontrol requeue` and a run that hits
its time limit again and again both end with exactly the uninterrupted run's numbers; an array
sweep isolates a failing run; a 2-task DDP job is one run; an Optuna search on SLURM resumes."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from conftest import BIN, DATA
from omegaconf import OmegaConf

from genlab import runs
from genlab.search import open_storage
from genlab.sweep import TIMEOUT_EXIT, TRIAL_ENV, read_manifest
from hydra_plugins.genlab_plugins import RETRY_ATTR, RUN_ATTR

TESTS = Path(__file__).parent
SMOKE = ("debug=smoke", "data=digits", "logger=csv")
# test_preemption's run: 8 batches of 32 per epoch, 24 steps in 3 epochs, deterministic
RUN = (*SMOKE, "trainer.deterministic=true", "trainer.limit_train_batches=null",
       "trainer.max_epochs=3", "callbacks.samples=null", "seed=7")


def launcher(cluster, **settings) -> list[str]:
    """hydra/launcher=slurm as a user of this 2-CPU node sets it (no GPUs, one CPU per task)."""
    settings = {"partition": cluster.partition, "gpus_per_node": "null", "cpus_per_task": 1,
                "mem_gb": 1, "timeout_min": 10, **settings}
    return ["hydra/launcher=slurm", *(f"hydra.launcher.{k}={v}" for k, v in settings.items())]


def stall_at(*steps: int, progress: Path) -> list[str]:
    """Hold the run at these steps until it is told to stop (tests/stall_at.py)."""
    return ["+callbacks.stall._target_=stall_at.StallAt", f"+callbacks.stall.steps={list(steps)}",
            f"+callbacks.stall.progress={progress}"]


def genlab_train(cluster, tmp_path: Path, *args: str, wait: bool = True, timeout: int = 600,
                 name: str = "out"):
    """genlab-train with the cluster's SLURM_CONF; the test helpers importable by its jobs; one
    thread per process, as the jobs ask for one CPU. Output goes to tmp_path/<name>.txt."""
    path = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    env = {**cluster.env, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    cmd = [str(BIN / "genlab-train"), *args, f"paths.log_dir={tmp_path}", f"paths.data_dir={DATA}"]
    with open(tmp_path / f"{name}.txt", "w") as out:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    if wait:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"no end after {timeout} s:\n{output(tmp_path, name)[-3000:]}") \
                from None
        finally:  # a sweep outlives its test otherwise, polling a cluster that is gone
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return proc


def output(tmp_path: Path, name: str = "out") -> str:
    return (tmp_path / f"{name}.txt").read_text()


def sweep_dir(log_dir: Path, task: str = "train") -> Path:
    (d,) = (log_dir / task / "multiruns").iterdir()
    return d


def job_logs(sweep: Path) -> str:
    """Everything the sweep's jobs printed, over all their attempts."""
    return "".join(p.read_text() for p in sorted((sweep / ".submitit").glob("*/*_log.*")))


def metric_rows(run: Path) -> Counter:
    """Every (column, step, value) metrics.csv holds, counted."""
    with open(run / "metrics.csv") as f:
        return Counter((k, r["step"], v) for r in csv.DictReader(f) for k, v in r.items()
                       if v != "" and k != "step")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """RUN trained in one go, without SLURM: the numbers every interrupted run must end with."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([str(BIN / "genlab-train"), *RUN, f"hydra.run.dir={run_dir}",
                    f"paths.data_dir={DATA}"], env=env, check=True, capture_output=True, timeout=300)
    return run_dir


def assert_same_as_reference(run: Path, reference: Path) -> None:
    s, ref = runs.read_summary(run), runs.read_summary(reference)
    assert s["status"] == "ok", s.get("error")
    assert s["resumed_from"].endswith(f"{run.name}/checkpoints/last.ckpt")
    for key in ("global_step", "epochs", "val/elbo", "val/kl", "test/elbo", "test/loglik"):
        assert s[key] == ref[key], key
    assert metric_rows(run) == metric_rows(reference)


def test_scontrol_requeue_resumes_exactly(slurm_cluster, reference, tmp_path):
    progress = tmp_path / "progress"
    proc = genlab_train(slurm_cluster, tmp_path, "-m", *launcher(slurm_cluster), *RUN,
                        *stall_at(12, progress=progress), wait=False)
    try:
        deadline = time.time() + 240
        while not progress.is_file():  # the run waits at step 12 (mid-epoch)
            assert proc.poll() is None and time.time() < deadline, output(tmp_path)[-3000:]
            time.sleep(0.5)
        (job,) = slurm_cluster.jobs()
        slurm_cluster.run("scontrol", "requeue", job)  # SIGTERM now, started again later
        assert proc.wait(300) == 0, output(tmp_path)[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    sweep = sweep_dir(tmp_path)
    assert job_logs(sweep).count("Starting with JobEnvironment") == 2  # two attempts
    assert_same_as_reference(sweep / "0", reference)
    assert {k: v["status"] for k, v in read_manifest(sweep).items()} == {"0": "ok"}


@pytest.mark.slow  # about 5 minutes of SLURM time limits; the requeue test covers resume in CI
def test_time_limit_again_and_again_then_exact_numbers(slurm_cluster, reference, tmp_path):
    # each attempt has two minutes. SLURM checks time limits every 30 s: USR2 comes 85-115 s into
    # an attempt, at least 30 s before the kill. The run waits at steps 5 and 13 (mid-epoch), so
    # it cannot finish before its third attempt however fast the machine is. On a busy machine
    # an attempt can spend a minute starting up (one minute was too short there: it requeues
    # without training); spare timeouts cover an attempt stopped before it reaches its step.
    settings = {"timeout_min": 2, "signal_delay_s": 5, "max_num_timeout": 6}
    proc = genlab_train(slurm_cluster, tmp_path, "-m", *launcher(slurm_cluster, **settings), *RUN,
                        *stall_at(5, 13, progress=tmp_path / "progress"), timeout=1200)
    assert proc.returncode == 0, output(tmp_path)[-3000:]
    sweep = sweep_dir(tmp_path)
    logs = job_logs(sweep)
    assert logs.count("Starting with JobEnvironment") >= 3, logs[-3000:]
    assert "this job is timed-out" in logs and "Requeued job" in logs
    assert_same_as_reference(sweep / "0", reference)
    ckpts = sorted(p.name for p in (sweep / "0" / "checkpoints").iterdir())
    assert "last.ckpt" in ckpts and not [c for c in ckpts if "-v" in c], ckpts


@pytest.mark.slow
def test_array_sweep_isolates_a_failing_run(slurm_cluster, tmp_path):
    proc = genlab_train(slurm_cluster, tmp_path, "-m", *launcher(slurm_cluster), *SMOKE,
                        "data.val_size=150,5000", timeout=400)
    out = output(tmp_path)
    assert proc.returncode == 1, out[-3000:]  # the exit code says a run failed
    sweep = sweep_dir(tmp_path)
    manifest = read_manifest(sweep)
    assert {k: v["status"] for k, v in manifest.items()} == {"0": "ok", "1": "failed"}
    assert "data.val_size=5000 is invalid" in manifest["1"]["error"]
    assert runs.read_summary(sweep / "0")["status"] == "ok"
    assert "1 of 2 runs ok" in out
    # polling job states without accounting: said once, not at every poll
    assert "Bypassing sacct error" not in out and out.count("accounting storage is disabled") == 1


@pytest.mark.slow
def test_ddp_job_with_two_tasks_is_one_run(slurm_cluster, tmp_path):
    proc = genlab_train(slurm_cluster, tmp_path, "-m", *launcher(slurm_cluster), *SMOKE,
                        "trainer=ddp_cpu", timeout=400)
    assert proc.returncode == 0, output(tmp_path)[-3000:]
    sweep = sweep_dir(tmp_path)
    assert [p.name for p in runs.find_runs(tmp_path)] == ["0"]
    s = runs.read_summary(sweep / "0")
    # 4 batches per epoch in each of the two processes, 2 epochs, one shared step counter
    assert s["status"] == "ok" and s["global_step"] == 8
    (job,) = [p for p in (sweep / ".submitit").iterdir() if p.is_dir()]
    assert sorted(p.name for p in job.glob("*_log.out")) == [f"{job.name}_0_log.out",
                                                             f"{job.name}_1_log.out"]
    logs = job_logs(sweep)
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in logs and "GLOBAL_RANK: 1, MEMBER: 2/2" in logs


def finished_trials(multiruns: Path) -> int:
    """Trials the study has a result for. Asked only once a run has ended ok, when the sweeper
    has long created its database (opening it earlier would race to create its tables)."""
    sweeps = list(multiruns.iterdir()) if multiruns.is_dir() else []
    if not sweeps or "ok" not in [v["status"] for v in read_manifest(sweeps[0]).values()]:
        return 0
    study = optuna.load_study(study_name="vae_elbo_search",
                              storage=open_storage(sweeps[0] / "optuna.journal"))
    return sum(t.state.is_finished() for t in study.trials)


def kill_search_when(cluster, tmp_path: Path, args: list[str], ready) -> Path:
    """Start the search, and once ready(<multiruns folder>) SIGKILL it and (as a user would)
    cancel its jobs; its sweep folder."""
    proc = genlab_train(cluster, tmp_path, *args, wait=False)
    try:
        deadline = time.time() + 300
        base = tmp_path / "vae_elbo_search" / "multiruns"
        while proc.poll() is None and time.time() < deadline and not ready(base):
            time.sleep(0.3)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    cluster.run("scancel", f"--partition={cluster.partition}")
    while cluster.jobs():
        time.sleep(1)
    return sweep_dir(tmp_path, "vae_elbo_search")


@pytest.mark.slow
def test_optuna_on_slurm_interrupted_and_resumed(slurm_cluster, tmp_path):
    args = ["hparams_search=vae_elbo", "hydra.sweeper.n_trials=4", *launcher(slurm_cluster), *SMOKE]
    # stop the search once Optuna has two trials' values
    sweep = kill_search_when(slurm_cluster, tmp_path, args, lambda base: finished_trials(base) >= 2)
    storage = open_storage(sweep / "optuna.journal")
    done_before = [t for t in optuna.load_study(study_name="vae_elbo_search", storage=storage).trials
                   if t.state.is_finished()]
    assert 2 <= len(done_before) < 4

    proc = genlab_train(slurm_cluster, tmp_path, *args, "resume=true", timeout=400)
    assert proc.returncode == 0, output(tmp_path)[-3000:]
    study = optuna.load_study(study_name="vae_elbo_search", storage=storage)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 4
    assert [t.params for t in done_before] == [t.params for t in complete[: len(done_before)]]
    for t in complete:
        assert t.value == runs.read_summary(sweep / str(t.number))["val/elbo"]


@pytest.mark.slow  # two sweeps and two jobs: 38 s on a loaded 2-core machine; test_run_lock.py in CI
def test_a_second_job_on_a_held_run_leaves_it_to_the_first(slurm_cluster, tmp_path):
    # a sweep's job holds run 0 at step 2; the same sweep again (resume=true), as a requeued job
    # and a manual resume meet: its job skips the run, through submitit's pickled return
    hold = ["+callbacks.stall._target_=stall_at.StallAt", "+callbacks.stall.steps=[2]",
            "+callbacks.stall.progress=${paths.output_dir}/stalled",
            "+callbacks.stall.release=${paths.output_dir}/go"]
    args = ["-m", *launcher(slurm_cluster), *SMOKE, *hold]
    first = genlab_train(slurm_cluster, tmp_path, *args, wait=False, name="first")
    try:
        deadline = time.time() + 240
        while not list(tmp_path.glob("train/multiruns/*/0/stalled")):
            assert first.poll() is None and time.time() < deadline, output(tmp_path, "first")[-3000:]
            time.sleep(0.5)
        sweep = sweep_dir(tmp_path)
        second = genlab_train(slurm_cluster, tmp_path, *args, "resume=true", name="second",
                              timeout=300)
        out = output(tmp_path, "second")
        assert second.returncode == 3, out[-3000:]  # genlab.sweep.BUSY_EXIT
        assert "0 of 1 runs ok, 1 left to another process" in out
        assert "run 0 is being trained by another process (pid" in job_logs(sweep)
        assert read_manifest(sweep)["0"]["status"] == "busy"
        (sweep / "0" / "go").touch()
        assert first.wait(300) == 0, output(tmp_path, "first")[-3000:]
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert read_manifest(sweep)["0"]["status"] == "ok"
    assert job_logs(sweep).count("status: ok") == 1  # trained once


@pytest.mark.slow
def test_asynchronous_workers_on_slurm_replace_a_cancelled_job(slurm_cluster, tmp_path):
    """hydra.sweeper.workers=2 on SLURM: a job scancelled mid-trial leaves its trial
    failed in the study and the manifest, its parameters are asked again, and the study still
    ends with n_trials complete; no two trials share a run folder."""
    progress = tmp_path / "progress"
    args = ["hparams_search=vae_elbo", "hydra.sweeper.n_trials=3", "hydra.sweeper.workers=2",
            "trainer.max_epochs=1", "callbacks.evaluation=null", *launcher(slurm_cluster), *SMOKE,
            *stall_at(2, progress=progress), "+callbacks.stall.max_wait_s=3"]
    proc = genlab_train(slurm_cluster, tmp_path, *args, wait=False)
    try:
        deadline = time.time() + 300
        while not progress.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        running = slurm_cluster.run("squeue", "-h", "-t", "R", "-o", "%i").split()
        slurm_cluster.run("scancel", running[0])
        proc.wait(400)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    # a run was lost and its parameters ran again: the search is whole, and says so
    assert proc.returncode == 0, output(tmp_path)[-3000:]
    assert "1 lost and run again" in output(tmp_path)
    sweep = sweep_dir(tmp_path, "vae_elbo_search")
    State = optuna.trial.TrialState
    trials = optuna.load_study(study_name="vae_elbo_search",
                               storage=open_storage(sweep / "optuna.journal")).trials
    (lost,) = [t for t in trials if t.state == State.FAIL]
    complete = [t for t in trials if t.state == State.COMPLETE]
    assert len(complete) == 3 and len(trials) == 4
    (retry,) = [t for t in complete if t.user_attrs.get("retry_of") == lost.number]
    assert retry.params == lost.params
    manifest = read_manifest(sweep)
    assert sorted(manifest, key=int) == [str(t.number) for t in trials]  # one folder per trial
    for t in trials:
        assert manifest[str(t.number)]["status"] == ("ok" if t in complete else "failed")


@pytest.mark.slow  # about 100 s: one two-minute SLURM time limit
def test_a_run_timed_out_for_good_says_so(slurm_cluster, tmp_path):
    """max_num_timeout=0: the first time limit ends the run. Its summary and manifest entry say
    timed_out (not running or interrupted), and the sweep exits TIMEOUT_EXIT."""
    settings = {"timeout_min": 2, "signal_delay_s": 5, "max_num_timeout": 0}
    proc = genlab_train(slurm_cluster, tmp_path, "-m", *launcher(slurm_cluster, **settings), *RUN,
                        *stall_at(5, progress=tmp_path / "progress"), timeout=400)
    out = output(tmp_path)
    assert proc.returncode == TIMEOUT_EXIT, out[-3000:]
    assert "0 of 1 runs ok, 1 timed out" in out
    sweep = sweep_dir(tmp_path)
    entry = read_manifest(sweep)["0"]
    summary = runs.read_summary(sweep / "0")
    assert entry["status"] == summary["status"] == "timed_out"
    assert "max_num_timeout=0" in entry["error"] and "max_num_timeout=0" in summary["error"]
    assert (sweep / "0" / "checkpoints" / "last.ckpt").is_file()  # resume=true continues it
    assert "this job is timed-out" in job_logs(sweep)


def trial_of_run(run: Path) -> int | None:
    """The Optuna trial a run folder trained (its job's GENLAB_OPTUNA_TRIAL); None for a run
    whose job never started."""
    if not (run / ".hydra" / "hydra.yaml").is_file():
        return None
    return int(OmegaConf.load(run / ".hydra" / "hydra.yaml").hydra.job.env_set[TRIAL_ENV])


def assert_manifest_agrees_with_study(sweep: Path, study_name: str) -> list:
    """Every trial has its own run folder, every run folder one trial, and the manifest's status
    is the study's state (a failed trial's run: failed, interrupted or timed_out; a lost trial's
    entry names the run that replaced it). Returns the trials."""
    State = optuna.trial.TrialState
    trials = optuna.load_study(study_name=study_name,
                               storage=open_storage(sweep / "optuna.journal")).trials
    manifest = read_manifest(sweep)
    # a trial asked just as the sweep was killed may have no run: failed, and asked again
    ran = [t for t in trials if RUN_ATTR in t.user_attrs or t.state != State.FAIL]
    assert sorted(manifest, key=int) == sorted(str(t.user_attrs[RUN_ATTR]) for t in ran)
    for t in ran:
        run = str(t.user_attrs[RUN_ATTR])
        assert trial_of_run(sweep / run) in (t.number, None)  # one trial, one run, one job
        entry = manifest[run]
        if t.state == State.COMPLETE:
            assert entry["status"] == "ok"
            assert t.value == runs.read_summary(sweep / run)["val/elbo"]
        elif t.state == State.PRUNED:
            assert entry["status"] == "pruned"
        else:
            assert t.state == State.FAIL and entry["status"] in ("failed", "interrupted", "timed_out")
    for retry in [t for t in trials if RETRY_ATTR in t.user_attrs]:
        lost = trials[retry.user_attrs[RETRY_ATTR]]
        assert lost.state == State.FAIL and retry.params == lost.params
        if RUN_ATTR in lost.user_attrs:
            run = str(lost.user_attrs[RUN_ATTR])
            assert manifest[run]["replaced_by"] == retry.user_attrs[RUN_ATTR]
    return trials


def search_args(cluster, progress: Path, n_trials: int) -> list[str]:
    """A vae_elbo search on 2 asynchronous SLURM workers, 1-s heartbeats, runs held 3 s at step 2."""
    return ["hparams_search=vae_elbo", f"hydra.sweeper.n_trials={n_trials}",
            "hydra.sweeper.workers=2", "hydra.sweeper.heartbeat_interval=1",
            "hydra.sweeper.grace_period=4", "trainer.max_epochs=1", "callbacks.evaluation=null",
            *launcher(cluster), *SMOKE, *stall_at(2, progress=progress),
            "+callbacks.stall.max_wait_s=3"]


# 29-31 s on the shared 2-core machine: three short trials and a retry on two workers
def test_a_worker_killed_mid_trial_is_failed_within_a_heartbeat(slurm_cluster, tmp_path):
    """SIGKILL to every process of a running worker's job: within a grace period its trial is
    FAIL in the study and its run failed in the manifest, its parameters run again, and the study
    still completes n_trials; the sweep exits 0, saying which run was lost and run again."""
    progress = tmp_path / "progress"
    proc = genlab_train(slurm_cluster, tmp_path, *search_args(slurm_cluster, progress, 3),
                        wait=False)
    try:
        deadline = time.time() + 300
        while not progress.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        job = slurm_cluster.run("squeue", "-h", "-t", "R", "-o", "%i").split()[0]
        pids = [int(line.split()[0]) for line in
                slurm_cluster.run("scontrol", "listpids", job).splitlines()[1:]]
        killed = time.time()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        assert proc.wait(400) == 0, output(tmp_path)[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    out = output(tmp_path)
    assert "1 lost and run again" in out
    sweep = sweep_dir(tmp_path, "vae_elbo_search")
    trials = assert_manifest_agrees_with_study(sweep, "vae_elbo_search")
    State = optuna.trial.TrialState
    (lost,) = [t for t in trials if t.state == State.FAIL]
    assert sum(t.state == State.COMPLETE for t in trials) == 3 and len(trials) == 4
    # marked failed within the grace period (4 s) and a heartbeat check (1 s), with slack for
    # a loaded machine
    assert lost.datetime_complete.timestamp() - killed < 4 + 1 + 10
    # every job that ended took its file; the killed one's, if its heartbeat told first, is
    # withdrawn (<run>.stale)
    assert {p.name for p in (sweep / ".heartbeats").iterdir()} <= {f"{lost.user_attrs[RUN_ATTR]}.stale"}


@pytest.mark.slow  # 35-80 s: a search killed with its jobs, then resumed
def test_a_killed_search_resumed_continues_the_study(slurm_cluster, tmp_path):
    """The whole search (sweeper and jobs) killed while trials run; resume=true continues the same
    study: the trials it cut off fail and run again, n_trials complete, and the manifest and the
    study agree on every trial."""
    progress = tmp_path / "progress"
    args = search_args(slurm_cluster, progress, 4)
    def ready(base: Path) -> bool:  # one trial has a value and another's run has started
        if finished_trials(base) < 1:
            return False
        (sweep,) = base.iterdir()
        return "running" in [v["status"] for v in read_manifest(sweep).values()]

    sweep = kill_search_when(slurm_cluster, tmp_path, args, ready)
    storage = open_storage(sweep / "optuna.journal")
    before = optuna.load_study(study_name="vae_elbo_search", storage=storage).trials
    cut_off = [t.number for t in before if t.state == optuna.trial.TrialState.RUNNING]
    assert cut_off and 1 <= sum(t.state.is_finished() for t in before) < 4

    proc = genlab_train(slurm_cluster, tmp_path, *args, "resume=true", timeout=400, name="resumed")
    assert proc.returncode == 0, output(tmp_path, "resumed")[-3000:]
    trials = assert_manifest_agrees_with_study(sweep, "vae_elbo_search")
    assert [t.params for t in trials[: len(before)]] == [t.params for t in before]  # the same study
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials) == 4
    # a trial the kill left running: its run had ended before the jobs were cancelled, and the
    # resumed sweeper took its result from the manifest, or it was cut off mid-run: failed,
    # its run interrupted, and its parameters ran again
    replaced = {t.user_attrs[RETRY_ATTR] for t in trials if RETRY_ATTR in t.user_attrs}
    manifest = read_manifest(sweep)
    for number in cut_off:
        t = trials[number]
        if t.state != optuna.trial.TrialState.COMPLETE:
            assert number in replaced
            if RUN_ATTR in t.user_attrs:
                run = str(t.user_attrs[RUN_ATTR])
                assert manifest[run]["status"] == "interrupted"
                if (sweep / run / runs.SUMMARY).is_file():
                    assert runs.read_summary(sweep / run)["status"] in runs.STOPPED
