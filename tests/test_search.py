"""genlab's Optuna search (genlab.search and the sweeper in hydra_plugins.genlab_plugins): Hydra's
sweep syntax becomes Optuna distributions, samplers are chosen by name, and the study lives in a
journal file or in a real PostgreSQL server, which this module starts and stops itself."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from conftest import BIN, DATA, run_cli

from genlab import runs
from genlab.config import ConfigError
from genlab.search import SAMPLERS, make_sampler, open_storage, search_space, tell, trial_overrides
from genlab.sweep import read_manifest
from hydra_plugins.genlab_plugins import RETRY_ATTR, RUN_ATTR

D = optuna.distributions


def test_search_space_from_params_and_command_line():
    params = {"model.lr": "tag(log, interval(1e-4, 1e-2))", "model.beta": "interval(0.5, 2.0)",
              "model.latent_dim": "choice(8, 16, 32)", "data.batch_size": "int(interval(16, 64))",
              "seed": "range(0, 3)"}
    distributions, fixed = search_space(params, ["model.beta=1.5", "model.act=choice(relu,elu)"])
    assert distributions == {
        "model.lr": D.FloatDistribution(1e-4, 1e-2, log=True),
        "model.latent_dim": D.CategoricalDistribution([8, 16, 32]),
        "data.batch_size": D.IntDistribution(16, 64),
        "seed": D.IntDistribution(0, 2),
        "model.act": D.CategoricalDistribution(["relu", "elu"]),
    }
    assert fixed == {"model.beta": "1.5"}  # the command line fixes a swept key
    study = optuna.create_study(sampler=make_sampler({"name": "random", "seed": 0}, distributions))
    trial = study.ask(fixed_distributions=distributions)
    overrides = trial_overrides(trial.params, fixed)
    assert f"model.lr={trial.params['model.lr']}" in overrides and "model.beta=1.5" in overrides
    assert len(overrides) == 6


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_each_sampler_by_name_is_seeded(name):
    distributions = {"x": D.CategoricalDistribution([1, 2, 3])} if name == "grid" else \
        {"x": D.FloatDistribution(0.0, 1.0), "y": D.FloatDistribution(-1.0, 1.0)}

    def draws(seed):
        study = optuna.create_study(sampler=make_sampler({"name": name, "seed": seed}, distributions))
        out = []
        for _ in range(3):
            trial = study.ask(fixed_distributions=distributions)
            tell(study, trial.number, trial.params["x"], optuna.trial.TrialState.COMPLETE)
            out.append(trial.params)
        return study.sampler, out

    sampler, first = draws(7)
    assert type(sampler).__name__ == SAMPLERS[name]
    assert draws(7)[1] == first  # the same seed draws the same trials
    if name == "grid":
        assert sorted(p["x"] for p in first) == [1, 2, 3]


def test_sampler_is_checked_in_one_line():
    space = {"x": D.FloatDistribution(0.0, 1.0)}
    # the older form of the presets
    sampler = make_sampler({"_target_": "optuna.samplers.TPESampler", "seed": 1,
                            "n_startup_trials": 5}, space)
    assert isinstance(sampler, optuna.samplers.TPESampler)
    for cfg, message in [
        ({"name": "tpee"}, r"hydra.sweeper.sampler.name='tpee' is invalid; allowed: tpe \| random"),
        ({"_target_": "optuna.samplers.NSGAIISampler"},
         r"hydra.sweeper.sampler._target_='optuna.samplers.NSGAIISampler' is invalid; allowed:"),
        ({"name": "random", "_target_": "optuna.samplers.TPESampler"}, r"disagrees with its _target_"),
        ({"name": "tpe", "n_startup_trial": 3}, r"hydra.sweeper.sampler=.* is invalid for sampler tpe"),
        ({"name": "grid"}, r"hydra.sweeper.params.x is FloatDistribution.*invalid for the grid"),
    ]:
        with pytest.raises(ConfigError, match=message) as e:
            make_sampler(cfg, space)
        assert "\n" not in str(e.value)


def _ask_and_tell(spec: str, n: int, queue) -> None:
    study = optuna.load_study(study_name="s", storage=open_storage(spec))
    for _ in range(n):
        trial = study.ask({"x": D.FloatDistribution(0.0, 1.0)})
        queue.put(trial.number)
        study.tell(trial, trial.params["x"])


def check_shared_study(spec: str) -> None:
    """Three processes ask and tell trials of one study at once: every trial is asked once."""
    optuna.create_study(study_name="s", storage=open_storage(spec), direction="minimize")
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_ask_and_tell, args=(spec, 5, queue)) for _ in range(3)]
    for p in procs:
        p.start()
    numbers = sorted(queue.get(timeout=120) for _ in range(15))
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert numbers == list(range(15))
    trials = optuna.load_study(study_name="s", storage=open_storage(spec)).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 15


def test_journal_file_is_shared_by_processes(tmp_path):
    check_shared_study(str(tmp_path / "optuna.journal"))


# -- a real PostgreSQL server, started and stopped here --------------------------------------------
def _pg_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if found:
        return found[-1].parent
    pg_ctl = shutil.which("pg_ctl")
    return Path(pg_ctl).parent if pg_ctl else None


@pytest.fixture(scope="module")
def postgresql():
    """The URL of a database on a PostgreSQL server of its own (a unix socket in a temporary
    folder, no TCP), stopped afterwards."""
    pytest.importorskip("psycopg2", reason="psycopg2 is not installed (pip install genlab[postgresql])")
    bin_dir = _pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql; make install)")
    # not under pytest's folder, which only root may enter
    root = Path(tempfile.mkdtemp(prefix="genlab-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root: its own user owns the folder
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres")
    data = root / "data"
    with socket.socket() as s:  # a free port number names the socket file
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run([*as_user, bin_dir / "initdb", "-D", data, "-U", "genlab", "--auth=trust"],
                   check=True, capture_output=True, cwd=root)
    subprocess.run([*as_user, bin_dir / "pg_ctl", "-D", data, "-l", root / "log", "-w", "-o",
                    f"-c listen_addresses='' -c unix_socket_directories={root} -p {port}", "start"],
                   check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg2://genlab@/postgres?host={root}&port={port}"
    finally:
        subprocess.run([*as_user, bin_dir / "pg_ctl", "-D", data, "-m", "fast", "-w", "stop"],
                       capture_output=True)
        shutil.rmtree(root)


def test_postgresql_is_shared_by_processes(postgresql):
    check_shared_study(postgresql)
    # leave the server as found for the next test
    optuna.delete_study(study_name="s", storage=open_storage(postgresql))


# slow (22 s): tests/test_pruning.py runs a pruned search on the journal file in CI
@pytest.mark.slow
def test_pruned_search_on_postgresql(postgresql, tmp_path):
    """A search whose study is on the server: the runs report through it, and the median pruner
    stops the hopeless trial."""
    t0 = time.time()
    proc = run_cli("hparams_search=vae_elbo", "debug=smoke", "data=digits", "logger=csv",
                   "callbacks.evaluation=null", "trainer.max_epochs=2", "model.latent_dim=8",
                   "model.objective.beta=1.0", "model.lr=choice(0.003,1e-06)", "hydra.sweeper.sampler.seed=1240",
                   "hydra.sweeper.n_trials=2", f"hydra.sweeper.storage='{postgresql}'",
                   "callbacks.pruning.pruner=median",
                   "callbacks.pruning.pruner_args={n_startup_trials: 1, n_warmup_steps: 0}",
                   f"paths.log_dir={tmp_path}", cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep,) = (tmp_path / "vae_elbo_search" / "multiruns").iterdir()
    assert not (sweep / "optuna.journal").exists()
    trials = optuna.load_study(study_name="vae_elbo_search", storage=open_storage(postgresql)).trials
    assert [t.params["model.lr"] for t in trials] == [0.003, 1e-06]
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE,
                                         optuna.trial.TrialState.PRUNED]
    assert trials[0].value == runs.read_summary(sweep / "0")["val/elbo"]
    assert sorted(trials[0].intermediate_values) == [0, 1]  # reported through the server
    assert runs.read_summary(sweep / "1")["status"] == "pruned"
    print(f"search on postgresql: {time.time() - t0:.1f} s")


# -- asynchronous workers ----------------------------------------------------------------------------
def descendants(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [d for c in map(int, children) for d in (c, *descendants(c))]


# slow (55-92 s on a shared 2-core machine): local worker processes, one killed mid-trial
@pytest.mark.slow
def test_asynchronous_workers_replace_a_killed_trial(tmp_path):
    """Two local worker processes (the SLURM preset on submitit's local executor): a new trial
    starts as soon as one ends, not when the pair has ended; a worker SIGKILLed mid-trial leaves
    its trial failed and its parameters asked again, and the study still completes n_trials."""
    progress = tmp_path / "progress"
    cmd = [str(BIN / "genlab-train"), "hparams_search=vae_elbo", "debug=smoke", "data=digits",
           "logger=csv", "callbacks.evaluation=null", "trainer.max_epochs=1",
           "hydra.sweeper.n_trials=3", "hydra.sweeper.workers=2", "hydra/launcher=slurm",
           "hydra.launcher.cluster=local", "hydra.launcher.gpus_per_node=null",
           # each run waits 3 s at step 2 (the killed one is killed there)
           "+callbacks.stall._target_=stall_at.StallAt", "+callbacks.stall.steps=[2]",
           f"+callbacks.stall.progress={progress}", "+callbacks.stall.max_wait_s=3",
           f"paths.log_dir={tmp_path}", f"paths.data_dir={DATA}"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent),
                                                        os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not progress.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    (sweep,) = (tmp_path / "vae_elbo_search" / "multiruns").iterdir()
    # a submitit local job is named by its process id; kill one that is still running
    running = sorted(int(p.name) for p in (sweep / ".submitit").iterdir() if p.name.isdigit()
                     and not list(p.glob("*_result.pkl")))
    for pid in [running[0], *descendants(running[0])]:  # the job's controller and its task
        os.kill(pid, signal.SIGKILL)
    out, _ = proc.communicate(timeout=400)
    # a run was lost and its parameters ran again: the search is whole, and says so
    assert proc.returncode == 0, out[-3000:]
    assert "1 lost and run again" in out

    study = optuna.load_study(study_name="vae_elbo_search",
                              storage=open_storage(sweep / "optuna.journal"))
    State = optuna.trial.TrialState
    failed = [t for t in study.trials if t.state == State.FAIL]
    complete = [t for t in study.trials if t.state == State.COMPLETE]
    assert len(failed) == 1 and len(complete) == 3 and len(study.trials) == 4
    (retry,) = [t for t in complete if t.user_attrs.get(RETRY_ATTR) == failed[0].number]
    assert retry.params == failed[0].params
    manifest = read_manifest(sweep)
    for t in study.trials:  # each trial its own run folder; manifest and study agree
        entry = manifest[str(t.user_attrs[RUN_ATTR])]
        assert entry["status"] == ("ok" if t.state == State.COMPLETE else "failed")
        if t.state == State.COMPLETE:
            assert t.value == runs.read_summary(sweep / str(t.user_attrs[RUN_ATTR]))["val/elbo"]
    assert "job lost" in manifest[str(failed[0].user_attrs[RUN_ATTR])]["error"]
    # no batch barrier: the third trial started before the first two had both ended
    first_two = sorted(study.trials, key=lambda t: t.number)[:2]
    third = sorted(study.trials, key=lambda t: t.datetime_start)[2]
    assert third.datetime_start < max(t.datetime_complete for t in first_two)


# -- optuna-dashboard on a study's journal file ------------------------------------------------------
CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None)


def test_dashboard_serves_a_finished_study(tmp_path):
    """optuna-dashboard, as the README opens it, on a search's journal file: its API lists the
    study and its trials, and its page, rendered by headless Chromium, shows the study."""
    journal = tmp_path / "optuna.journal"
    study = optuna.create_study(study_name="vae_elbo_search", storage=open_storage(journal),
                                direction="maximize")
    for x in (0.1, 0.7, 0.4):
        trial = study.ask({"model.lr": D.FloatDistribution(0.0, 1.0)})
        study.tell(trial, -abs(trial.params["model.lr"] - x))
    dashboard = BIN / "optuna-dashboard"
    if not dashboard.exists():
        pytest.skip("optuna-dashboard is not installed (pip install genlab[dashboard])")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([dashboard, str(journal), "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                studies = json.load(urllib.request.urlopen(f"{base}/api/studies", timeout=5))
                break
            except OSError:
                assert time.time() < deadline and proc.poll() is None, "the dashboard did not start"
                time.sleep(0.3)
        (summary,) = studies["study_summaries"]
        assert summary["study_name"] == "vae_elbo_search" and summary["directions"] == ["maximize"]
        detail = json.load(urllib.request.urlopen(f"{base}/api/studies/{summary['study_id']}"))
        values = [t["values"][0] for t in detail["trials"]]
        assert values == [t.value for t in study.trials]
        if CHROMIUM is not None:
            dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                                  "--virtual-time-budget=10000", "--dump-dom",
                                  f"{base}/dashboard/studies/{summary['study_id']}"],
                                 capture_output=True, text=True, timeout=120).stdout
            assert "vae_elbo_search" in dom
    finally:
        proc.kill()
        proc.wait()


def test_resume_counts_a_lost_trials_replacement_not_the_lost_trial(tmp_path):
    from omegaconf import OmegaConf

    from hydra_plugins.genlab_plugins import ResumableOptunaSweeper

    journal = tmp_path / "optuna.journal"
    study = optuna.create_study(study_name="s", storage=open_storage(journal))
    space = {"x": D.FloatDistribution(0.0, 1.0)}
    lost = study.ask(space)  # its job died: told FAIL, its parameters enqueued again
    lost.set_user_attr(RUN_ATTR, 0)
    study.tell(lost, state=optuna.trial.TrialState.FAIL)
    study.enqueue_trial(lost.params, user_attrs={RETRY_ATTR: lost.number})
    for run in (1, 2):
        trial = study.ask(space)
        trial.set_user_attr(RUN_ATTR, run)
        study.tell(trial, 0.5)
    assert study.trials[1].params == lost.params
    sweeper = ResumableOptunaSweeper(direction="minimize", storage=str(journal), study_name="s",
                                     n_trials=3)
    sweeper.config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    assert sweeper._resume(optuna.load_study(study_name="s", storage=open_storage(journal))) == 2
    assert sweeper.job_idx == 3


def _beat_until_killed(sweep_dir: str) -> None:
    from hydra_plugins.genlab_plugins import Heartbeat

    Heartbeat(sweep_dir, 7, interval=1)
    time.sleep(30)


def test_heartbeat_file_is_renewed_then_withdrawn_and_the_job_stops(tmp_path):
    """A job's heartbeat: its file is renewed every interval; a stopped beat is stale after the
    grace period; a withdrawn one makes a still-running job SIGTERM itself; stop() removes it."""
    from hydra_plugins.genlab_plugins import Heartbeat, stale_heartbeats, withdraw_heartbeat

    beat = Heartbeat(tmp_path, 3, interval=1)
    path = tmp_path / ".heartbeats" / "3"
    first = path.stat().st_mtime
    time.sleep(1.5)
    assert path.stat().st_mtime > first and stale_heartbeats(tmp_path, [3, 4], 2) == []
    beat.stop()
    assert not path.exists() and stale_heartbeats(tmp_path, [3], 2) == []  # ended: not stale
    path.touch()
    os.utime(path, (time.time() - 5, time.time() - 5))  # a job that died 5 s ago
    assert stale_heartbeats(tmp_path, [3], 4) == [3] and stale_heartbeats(tmp_path, [3], 6) == []

    child = mp.get_context("fork").Process(target=_beat_until_killed, args=(str(tmp_path),))
    child.start()
    deadline = time.time() + 10
    while not (tmp_path / ".heartbeats" / "7").exists():
        assert time.time() < deadline
        time.sleep(0.1)
    withdraw_heartbeat(tmp_path, 7)
    child.join(10)
    assert child.exitcode == -signal.SIGTERM
