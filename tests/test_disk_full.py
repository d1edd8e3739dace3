"""A disk that fills up during a run (issue 25 item 1): every file in the run folder stays whole
(the old version or the new one), the run ends with one line that names the folder and what it
kept, summary.json says failed and why, and once there is room the same command continues from
the last good checkpoint to exactly the uninterrupted run's results.

The run folder is on a real small filesystem, a tmpfs each test mounts and unmounts itself, which
tests/fill_disk_at.py fills in a chosen phase, as another job on a shared disk would.
"""

from __future__ import annotations

import csv
import os
import subprocess
from pathlib import Path

import pytest
from conftest import BIN, DATA, NO_EVAL, make_cfg

from genlab import runs
from genlab.train import train

TESTS = Path(__file__).parent
ARGS = ["debug=smoke", "data=digits", "logger=csv", "trainer.deterministic=true",
        "callbacks.samples=null", *NO_EVAL, "seed=7"]
PER_ATTEMPT = {"resumed_from", "best_checkpoint", "git_commit"}


def run(run_dir: Path, *extra: str):
    return train(make_cfg(run_dir, *ARGS, *extra))


def fill_args(filler: Path, phase: str, **kw) -> list[str]:
    return ["+callbacks.fill._target_=fill_disk_at.FillDiskAt", f"+callbacks.fill.filler={filler}",
            f"+callbacks.fill.phase={phase}", *(f"+callbacks.fill.{k}={v}" for k, v in kw.items())]


def rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def result(run_dir: Path) -> dict:
    return {k: v for k, v in runs.read_summary(run_dir).items() if k not in PER_ATTEMPT}


def checkpoints(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints").iterdir())


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("whole") / "run"
    run(run_dir)
    assert runs.read_summary(run_dir)["status"] == "ok"
    # the cases below rely on epoch 1 improving on epoch 0: best-epoch001.ckpt replaces 000
    assert checkpoints(run_dir) == ["best-epoch001.ckpt", "last.ckpt"]
    return run_dir


@pytest.fixture
def disk(tmp_path):
    """A 16 MB tmpfs at tmp_path/disk, unmounted afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    try:
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "genlab-test", str(mount)],
                              capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        pytest.skip("no mount command to mount a small tmpfs")
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root or CAP_SYS_ADMIN): {proc.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True, timeout=30)


def assert_kept_whole(run_dir: Path, whole: Path) -> dict:
    """What a full disk leaves: a summary that says why, checkpoints that all load, a metrics.csv
    whose rows are the uninterrupted run's first rows, and no partial file anywhere."""
    summary = runs.read_summary(run_dir)
    assert summary["status"] == "failed" and summary["disk_full"] is True, summary
    assert "No space left on device" in summary["error"]
    for ckpt in (run_dir / "checkpoints").glob("*.ckpt"):
        runs.read_checkpoint(ckpt)  # raises on a truncated file
    assert not list(run_dir.rglob(f".*{runs.TEMPORARY}"))
    kept = [values(r) for r in rows(run_dir)]  # the columns of later rows are missing, not empty
    assert kept == [values(r) for r in rows(whole)][: len(kept)]
    return summary


def values(row: dict) -> dict:
    return {k: v for k, v in row.items() if v != ""}


def continue_and_compare(run_dir: Path, whole: Path, filler: Path) -> None:
    filler.unlink()  # room again
    run(run_dir)  # the same command: it continues from checkpoints/last.ckpt
    summary = runs.read_summary(run_dir)
    assert summary["status"] == "ok", summary.get("error")
    assert summary["resumed_from"] == str(run_dir / "checkpoints" / "last.ckpt")
    assert result(run_dir) == result(whole)
    assert rows(run_dir) == rows(whole)
    assert checkpoints(run_dir) == checkpoints(whole)
    assert not (run_dir / runs.RESERVE).exists()


def test_full_at_a_best_checkpoint_ends_in_one_line_and_continues(disk, whole):
    run_dir, filler = disk / "run", disk / "filler"
    path = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    cmd = [str(BIN / "genlab-train"), *ARGS, *fill_args(filler, "checkpoint", epoch=1, nth=1),
           f"hydra.run.dir={run_dir}", f"paths.data_dir={DATA}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=disk)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr and "OSError" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("genlab-train:")]
    assert len(lines) == 1 and proc.stderr.rstrip().endswith(lines[0]), proc.stderr
    assert lines[0].startswith(f"genlab-train: no space left on the disk of {run_dir} writing "
                               "checkpoints/best-epoch001.ckpt; kept whole: checkpoints/best-epoch000.ckpt, "
                               "checkpoints/last.ckpt, metrics.csv, summary.json (status failed); with room again, "
                               f"ckpt_path={run_dir}/checkpoints/last.ckpt continues from it"), lines[0]

    assert_kept_whole(run_dir, whole)
    assert checkpoints(run_dir) == ["best-epoch000.ckpt", "last.ckpt"]
    assert runs.read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 4
    continue_and_compare(run_dir, whole, filler)


def test_full_at_last_ckpt_keeps_the_previous_one(disk, whole):
    """Overwriting last.ckpt on a full disk keeps the previous last.ckpt (epoch 0), not a
    truncated file; the best checkpoint of epoch 1 was written before it."""
    run_dir, filler = disk / "run", disk / "filler"
    with pytest.raises(runs.DiskFull, match=r"writing checkpoints/last.ckpt; kept whole: "
                                            r"checkpoints/best-epoch001.ckpt, checkpoints/last.ckpt"):
        run(run_dir, *fill_args(filler, "checkpoint", epoch=1, nth=2))
    assert_kept_whole(run_dir, whole)
    assert runs.read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 4
    continue_and_compare(run_dir, whole, filler)


def test_full_at_metrics_csv_keeps_its_earlier_rows(disk, whole):
    run_dir, filler = disk / "run", disk / "filler"
    with pytest.raises(runs.DiskFull, match=r"writing metrics.csv; kept whole"):
        run(run_dir, *fill_args(filler, "train_step", step=6))
    assert_kept_whole(run_dir, whole)
    # every row before that of the 6th training step (Lightning logs it as step 5) is there
    assert max(int(r["step"]) for r in rows(run_dir)) == 4
    continue_and_compare(run_dir, whole, filler)


def test_full_at_the_summary_still_records_the_result(disk, whole):
    """The room kept while the run is running takes its final summary."""
    run_dir, filler = disk / "run", disk / "filler"
    run(run_dir, *fill_args(filler, "final_test"))
    free = os.statvfs(filler)
    assert free.f_bavail * free.f_frsize <= runs.RESERVE_BYTES  # full but for the room it kept
    assert runs.read_summary(run_dir)["status"] == "ok"
    assert result(run_dir) == result(whole)
    assert not (run_dir / runs.RESERVE).exists()
