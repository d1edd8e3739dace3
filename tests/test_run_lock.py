"""One process per run folder (genlab.runs.hold_run): two sweeps on one folder train every run
once, a second launch of a held run touches nothing, a killed holder leaves no stale lock."""

from __future__ import annotations

import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import BIN, DATA, make_cfg
from omegaconf import OmegaConf

from genlab import report, runs
from genlab.sweep import BUSY_EXIT, SweepManifest, read_manifest, update_manifest

TESTS = Path(__file__).parent
SMOKE = ("debug=smoke", "data=digits", "logger=csv")


# each run waits after training step `step` until its folder holds a file `go` (tests/stall_at.py)
def hold_at(step: int) -> list[str]:
    return ["+callbacks.stall._target_=stall_at.StallAt", f"+callbacks.stall.steps=[{step}]",
            "+callbacks.stall.progress=${paths.output_dir}/stalled",
            "+callbacks.stall.release=${paths.output_dir}/go"]


def start(tmp_path: Path, name: str, *args: str) -> subprocess.Popen:
    """genlab-train in the background, its output in tmp_path/<name>.txt."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    with open(tmp_path / f"{name}.txt", "w") as out:
        return subprocess.Popen([str(BIN / "genlab-train"), *args, f"paths.data_dir={DATA}"],
                                cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def output(tmp_path: Path, name: str) -> str:
    return (tmp_path / f"{name}.txt").read_text()


def wait_for(base: Path, pattern: str, *procs: subprocess.Popen, timeout: float = 120) -> Path:
    """The first file under `base` that matches `pattern`, once there is one."""
    deadline = time.monotonic() + timeout
    while not (found := sorted(base.glob(pattern))):
        for p in procs:
            assert p.poll() is None, f"{p.args[:3]} ended ({p.returncode}) before {pattern} appeared"
        assert time.monotonic() < deadline, f"no {pattern} after {timeout} s"
        time.sleep(0.1)
    return found[0]


def ended(proc: subprocess.Popen, timeout: float = 120) -> int:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Seeds 0 and 1 trained in one go, in this process: what every run must end with."""
    from genlab.train import train

    base = tmp_path_factory.mktemp("reference")
    for seed in (0, 1):
        train(make_cfg(base / str(seed), *SMOKE, f"seed={seed}"))
    return base


def assert_same_run(run: Path, ref: Path) -> None:
    """summary.json, metrics.csv and the checkpoints of one uninterrupted run."""
    s, r = runs.read_summary(run), runs.read_summary(ref)
    assert s["status"] == "ok", s.get("error")
    assert Path(s.pop("best_checkpoint")).name == Path(r.pop("best_checkpoint")).name
    s.pop("resumed_from", None)
    assert s == r
    assert (run / "metrics.csv").read_text() == (ref / "metrics.csv").read_text()
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == sorted(p.name for p in (ref / "checkpoints").iterdir())
    for name in names:
        a, b = (torch.load(d / "checkpoints" / name, weights_only=True) for d in (run, ref))
        assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"])
        for key in a["state_dict"]:
            assert torch.equal(a["state_dict"][key], b["state_dict"][key]), (name, key)
        for sa, sb in zip(a["optimizer_states"][0]["state"].values(),
                          b["optimizer_states"][0]["state"].values(), strict=True):
            assert all(torch.equal(sa[k], sb[k]) for k in sa), name


def test_two_sweeps_on_one_folder_train_each_run_once(reference, tmp_path):
    # the double launch: a sweep, then the same command with resume=true while the first
    # still trains. Each run waits at step 2 until the test lets it go, so the order is fixed:
    # A holds run 0; B skips it and takes run 1; A ends run 0 and skips run 1; B ends run 1.
    args = ["-m", *SMOKE, "seed=0,1", *hold_at(2), f"paths.log_dir={tmp_path}"]
    a = start(tmp_path, "a", *args)
    try:
        sweep = wait_for(tmp_path, "train/multiruns/*/0/stalled", a).parent.parent
        b = start(tmp_path, "b", *args, "resume=true")
        try:
            wait_for(sweep, "1/stalled", a, b)
            (sweep / "0" / "go").touch()
            assert ended(a) == BUSY_EXIT, output(tmp_path, "a")[-3000:]
            # A's skip marks B's entry busy, naming B; B's outcome replaces it
            entry = read_manifest(sweep)["1"]
            assert entry["status"] == "busy" and f"(pid {b.pid}, host" in entry["error"]
            (sweep / "1" / "go").touch()
            assert ended(b) == 0, output(tmp_path, "b")[-3000:]
        finally:
            if b.poll() is None:
                os.killpg(b.pid, signal.SIGKILL)
    finally:
        if a.poll() is None:
            os.killpg(a.pid, signal.SIGKILL)

    out_a, out_b = output(tmp_path, "a"), output(tmp_path, "b")
    host = socket.gethostname()
    assert f"run 1 is being trained by another process (pid {b.pid}, host {host}); skipped" in out_a
    assert f"run 0 is being trained by another process (pid {a.pid}, host {host}); skipped" in out_b
    # A's end: run 1 left to B, exit code 3; B's end: both ok
    assert "1 of 2 runs ok, 1 left to another process" in out_a
    assert f"run 1 busy: {' '.join(args[1:4])}" in out_a
    assert f"being trained by another process (pid {b.pid}, host {host}); once that process has " \
        "ended, the same command with resume=true runs what is left" in out_a
    assert "2 of 2 runs ok" in out_b
    # every run trained exactly once (each trained run prints its report once), by one process
    assert out_a.count("status: ok") == out_b.count("status: ok") == 1
    assert {k: v["status"] for k, v in read_manifest(sweep).items()} == {"0": "ok", "1": "ok"}
    for seed in ("0", "1"):
        assert_same_run(sweep / seed, reference / seed)


def test_a_held_run_is_refused_and_a_killed_holder_leaves_no_lock(reference, tmp_path):
    run = tmp_path / "run"
    args = [*SMOKE, "seed=0", f"hydra.run.dir={run}"]
    first = start(tmp_path, "first", *args, *hold_at(6))  # mid-epoch 1, after epoch 0's last.ckpt
    try:
        wait_for(run, "stalled", first)
        assert (run / runs.LOCK).read_text() == f"pid {first.pid}, host {socket.gethostname()}\n"
        kept = {p: p.read_bytes() for p in [run / runs.SUMMARY, *(run / ".hydra").glob("*.yaml")]}

        # a second launch of the run (here with another setting, which Hydra writes into .hydra/
        # before genlab runs): one line, exit code 3, the folder as it was
        second = start(tmp_path, "second", *args, "trainer.max_epochs=3")
        assert ended(second) == BUSY_EXIT
        lines = output(tmp_path, "second").strip().splitlines()
        assert lines == [f"genlab-train: {run} is being trained by another process "
                         f"(pid {first.pid}, host {socket.gethostname()})"]
        assert {p: p.read_bytes() for p in kept} == kept  # Hydra's rewrite of .hydra/ undone
        # genlab-report tells a run being trained from one that stopped without an end
        (loaded,) = report.load.load_runs([str(run)]).runs
        assert loaded.status_text == f"running, being trained now (pid {first.pid}, host " \
            f"{socket.gethostname()})"
        assert "1 of the running being trained now" in report.writers.intro(
            [str(run)], None, [loaded])[0]
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the holder dies without a word
        first.wait()

    # the lock died with it: the next attempt takes the run over at once and continues it
    assert runs.run_holder(run) is None
    assert loaded.status_text.startswith("running, but no process trains it")
    assert runs.read_summary(run)["status"] == "running"
    third = start(tmp_path, "third", *args)
    assert ended(third) == 0, output(tmp_path, "third")[-3000:]
    assert runs.read_summary(run)["resumed_from"].endswith("checkpoints/last.ckpt")
    assert (run / runs.LOCK).read_text().startswith(f"pid {third.pid},")
    assert_same_run(run, reference / "0")


HOLD = """
import os, sys, time
from genlab import report, runs
runs.hold_run(sys.argv[1])
worker = os.fork()  # as a data loader forks its workers
if worker == 0:
    time.sleep(60)
    os._exit(0)
print(worker, flush=True)
time.sleep(60)
"""


def test_the_lock_itself(tmp_path):
    run = tmp_path / "run"
    me = runs.this_process()
    assert runs.run_holder(run) is None  # no lock file yet
    runs.hold_run(run)
    runs.hold_run(run)  # holds nest in one process: train() inside a sweep's job
    assert runs.run_holder(run) == me
    child = subprocess.run([sys.executable, "-c", HOLD, str(run)], capture_output=True, text=True,
                           timeout=30)
    assert child.returncode == 1 and f"RunBusy: {run} is being trained by another process ({me})" \
        in child.stderr
    runs.release_run(run)
    assert runs.run_holder(run) == me  # one hold left
    runs.release_run(run)
    assert runs.run_holder(run) is None
    assert (run / runs.LOCK).read_text() == f"{me}\n"  # the last holder

    # another process holds it; killed, it leaves the lock free at once, though its forked
    # worker lives on
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE,
                              text=True)
    worker = None
    try:
        worker = int(holder.stdout.readline())
        assert runs.run_holder(run) == f"pid {holder.pid}, host {socket.gethostname()}"
        with pytest.raises(runs.RunBusy, match=f"pid {holder.pid}, host"):
            runs.hold_run(run)
    finally:
        holder.kill()
        holder.wait()
    try:
        os.kill(worker, 0)  # alive
        assert runs.run_holder(run) is None
        runs.hold_run(run)
        assert runs.run_holder(run) == me
        runs.release_run(run)
    finally:
        os.kill(worker, signal.SIGKILL)

    # pickled whole, as a job's return value travels from a SLURM job or a joblib worker
    busy = pickle.loads(pickle.dumps(runs.RunBusy(run, "pid 1, host h")))
    assert (busy.run_dir, busy.holder) == (run, "pid 1, host h")


def test_a_sweep_ends_naming_what_it_left(tmp_path, capsys):
    """SweepManifest's last word on a sweep folder whose runs other processes hold or held."""
    sweep = tmp_path / "sweep"
    busy = {"status": "busy", "error": "held"}
    for key, entry in {"0": {"status": "ok"}, "1": {"status": "running"}, "2": {"status": "ok"},
                       "3": {"status": "running"}}.items():
        update_manifest(sweep, key, {"dir": key, "overrides": [f"seed={key}"], **entry})
        # a skip marks a run busy only while nobody has ended it
        update_manifest(sweep, key, busy, if_status=(None, "running", "busy"))
    assert [e["status"] for e in read_manifest(sweep).values()] == ["ok", "busy", "ok", "busy"]
    end = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}})

    runs.hold_run(sweep / "1")  # run 1's holder trains it still; run 3's has stopped since
    try:
        with pytest.raises(SystemExit) as exit_:
            SweepManifest().on_multirun_end(end)
    finally:
        runs.release_run(sweep / "1")
    assert exit_.value.code == BUSY_EXIT
    out, err = capsys.readouterr()
    assert "2 of 4 runs ok, 2 left to another process" in out
    assert err.splitlines() == [
        f"  run 1 busy: seed=1: being trained by another process ({runs.this_process()}); once "
        "that process has ended, the same command with resume=true runs what is left",
        "  run 3 busy: seed=3: skipped while another process held it, which has stopped since; "
        "the same command with resume=true continues it"]

    update_manifest(sweep, "2", {"status": "failed", "error": "boom"})
    with pytest.raises(SystemExit) as exit_:
        SweepManifest().on_multirun_end(end)
    assert exit_.value.code == 1  # a failure outranks runs left to others
