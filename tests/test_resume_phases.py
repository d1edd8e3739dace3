"""A run stopped in any phase and started again in the same folder ends with exactly the summary
values and metrics.csv rows of an uninterrupted run (issue 8 item 2, issue 12 item 2).

SIGTERM (SLURM preemption) is sent in-process by tests/sigterm_at.py: Lightning turns it into an
exception at its next check, genlab saves what the next attempt needs and exits with 143. SIGKILL
(no chance to save) runs in a subprocess; its next attempt continues from the newest checkpoint
that was written before it died.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import BIN, DATA, make_cfg

from genlab import runs
from genlab.train import train

TESTS = Path(__file__).parent
# 2 epochs of 4 training batches, 2 validation batches each; the interrupted phases sit in epoch 0
# so that a whole epoch of training follows them
ARGS = ["debug=smoke", "data=digits", "logger=csv", "trainer.deterministic=true",
        "callbacks.samples=null", "seed=7"]
# values that name the attempt rather than describe the result
PER_ATTEMPT = {"resumed_from", "best_checkpoint", "git_commit"}


def run(run_dir: Path, *extra: str):
    return train(make_cfg(run_dir, *ARGS, *extra))


def kill_args(phase: str, **kw) -> list[str]:
    return ["+callbacks.kill._target_=sigterm_at.SigtermAt", f"+callbacks.kill.phase={phase}",
            *(f"+callbacks.kill.{k}={v}" for k, v in kw.items())]


def rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def result(run_dir: Path) -> dict:
    return {k: v for k, v in runs.read_summary(run_dir).items() if k not in PER_ATTEMPT}


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("whole") / "run"
    run(run_dir)
    assert runs.read_summary(run_dir)["status"] == "ok"
    return run_dir


def assert_same_run(run_dir: Path, whole: Path) -> None:
    summary = runs.read_summary(run_dir)
    assert summary["status"] == "ok", summary.get("error")
    assert result(run_dir) == result(whole)
    assert rows(run_dir) == rows(whole)
    # one checkpoint of each kind: no last-v1.ckpt or best-...-v1.ckpt beside them
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert names == sorted(p.name for p in (whole / "checkpoints").iterdir())


@pytest.mark.parametrize("phase, where", [
    ("train_step", {"step": 6}),
    ("sanity", {}),
    ("val_batch", {"epoch": 0}),
    ("val_last_batch", {"epoch": 0}),
    ("evaluation", {"epoch": 0}),
    ("train_epoch_end", {"epoch": 0}),
    ("checkpoint", {"epoch": 0}),
    ("train_end", {}),  # between fit and the final validation (issue 25 item 4)
    ("final_validate", {}),
    ("final_test", {}),
])
def test_sigterm_in_any_phase_then_the_same_command_gives_the_uninterrupted_run(
        tmp_path, whole, phase, where):
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as stopped:
        run(run_dir, *kill_args(phase, **where))
    assert stopped.value.code == 128 + signal.SIGTERM
    assert runs.read_summary(run_dir)["status"] == "interrupted"

    last = run_dir / "checkpoints" / "last.ckpt"
    # stopped before its first step, a run has nothing to keep: the next attempt starts afresh
    assert last.is_file() == (phase != "sanity")

    run(run_dir)  # the same command again: it continues from checkpoints/last.ckpt
    assert runs.read_summary(run_dir).get("resumed_from") == (str(last) if phase != "sanity" else None)
    assert_same_run(run_dir, whole)


def test_sigkill_resumes_from_the_last_epoch_end_checkpoint(tmp_path, whole):
    run_dir = tmp_path / "run"
    # one thread, as in this process (tests/conftest.py), so both attempts compute alike
    path = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    cmd = [str(BIN / "genlab-train"), *ARGS, *kill_args("train_step", step=6, signal_name="SIGKILL"),
           f"hydra.run.dir={run_dir}", f"paths.data_dir={DATA}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert runs.read_summary(run_dir)["status"] == "running"  # it had no chance to say more
    assert runs.read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 4

    run(run_dir)
    assert_same_run(run_dir, whole)


def test_request_stop_from_a_signal_handler_stops_like_sigterm(tmp_path, whole):
    """A cluster's own warning signal (submitit's USR2 before a time limit) reaches the run through
    request_stop(): the same checkpoint, exit code and exact resume as SIGTERM."""
    from genlab.callbacks.guard import request_stop

    stopped_runs = []
    previous = signal.signal(signal.SIGUSR2, lambda *_: stopped_runs.append(request_stop()))
    run_dir = tmp_path / "run"
    try:
        with pytest.raises(SystemExit) as stopped:
            run(run_dir, *kill_args("train_step", step=6, signal_name="SIGUSR2"))
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert stopped_runs == [True] and stopped.value.code == 128 + signal.SIGTERM
    assert runs.read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 6
    assert request_stop() is False  # no fit is running any more

    run(run_dir)
    assert_same_run(run_dir, whole)
