"""The W&B offline reader (tests/wandb_offline.py) against files that wandb itself writes."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import warnings

import numpy as np
import pytest
from PIL import Image
from wandb_offline import (
    BLOCK_SIZE,
    WandbFileError,
    config,
    find_wandb_files,
    history,
    media_files,
    read_records,
    run_id,
    summary,
)

N_STEPS = 150  # enough history to fill more than one 32 KiB block
IMAGE_STEPS = (0, 75, 149)
# A config value longer than two blocks forces a record split FIRST / MIDDLE / LAST.
CONFIG = {"a": 1, "model": {"beta": 4.0, "name": "vae"}, "long": "x" * (2 * BLOCK_SIZE + 100)}


def elbo(i: int) -> float:
    return -200.25 - 0.5 * i


@pytest.fixture(scope="module")
def wandb_env(tmp_path_factory):
    """Keep wandb offline, quiet, and writing nowhere but a temporary folder."""
    home = tmp_path_factory.mktemp("wandb_home")
    with pytest.MonkeyPatch.context() as mp:
        for var, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true",
                           "WANDB_CONFIG_DIR": home / "config", "WANDB_CACHE_DIR": home / "cache",
                           "WANDB_DATA_DIR": home / "data", "WANDB_DIR": home}.items():
            mp.setenv(var, str(value))
        yield


@pytest.fixture(scope="module")
def plain_run(wandb_env, tmp_path_factory):
    import wandb

    root = tmp_path_factory.mktemp("plain")
    run = wandb.init(project="genlab-test", dir=root, mode="offline", config=CONFIG)
    for i in range(N_STEPS):
        row = {"val/elbo": elbo(i), "train/loss": 1.0 / (i + 1)}
        if i in IMAGE_STEPS:
            row["samples"] = wandb.Image(np.full((8, 8), i, dtype=np.uint8))
        run.log(row)
    run.finish()
    return root


@pytest.fixture(scope="module")
def lightning_run(wandb_env, tmp_path_factory):
    """The way genlab logs: through Lightning's WandbLogger."""
    from pytorch_lightning.loggers import WandbLogger

    root = tmp_path_factory.mktemp("lightning")
    logger = WandbLogger(project="genlab-test", save_dir=str(root), offline=True)
    logger.log_hyperparams({"model": {"beta": 4.0, "d_mode": "noise"}, "seed": 3})
    for step in (10, 20, 30):
        logger.log_metrics({"val/elbo": -100.5 - step, "val/fid": 30.0 - step / 10}, step=step)
    logger.log_image(key="samples/prior", images=[np.zeros((8, 8)), np.ones((8, 8))], step=30)
    logger.experiment.finish()
    return root


def test_plain_wandb_history_round_trips(plain_run):
    (path,) = find_wandb_files(plain_run)
    assert path.name.endswith(".wandb") and path.parent.name.startswith("offline-run-")
    assert path.stat().st_size > BLOCK_SIZE  # the multi-block paths really ran

    rows = history(plain_run)
    assert [r["_step"] for r in rows] == list(range(N_STEPS))
    assert [r["val/elbo"] for r in rows] == [elbo(i) for i in range(N_STEPS)]
    assert [r["train/loss"] for r in rows] == [1.0 / (i + 1) for i in range(N_STEPS)]
    assert summary(plain_run)["val/elbo"] == elbo(N_STEPS - 1)

    with_images = [r for r in rows if "samples" in r]
    assert [r["_step"] for r in with_images] == list(IMAGE_STEPS)
    for r in with_images:
        assert r["samples"]["_type"] == "image-file"
        (png,) = media_files(plain_run, r["samples"])
        assert png.is_file()
        assert (np.asarray(Image.open(png)) == r["_step"]).all()  # the pixels we logged


def test_plain_wandb_config_round_trips(plain_run):
    assert config(plain_run) == CONFIG  # includes the record split over three blocks


def test_lightning_logger_round_trips(lightning_run):
    rows = history(lightning_run)
    metric_rows = [r for r in rows if "val/elbo" in r]
    # WandbLogger keeps wandb's own _step counting 0, 1, 2 and puts Lightning's step beside it.
    assert [r["trainer/global_step"] for r in metric_rows] == [10, 20, 30]
    assert [r["val/elbo"] for r in metric_rows] == [-110.5, -120.5, -130.5]
    assert [r["val/fid"] for r in metric_rows] == [29.0, 28.0, 27.0]
    assert config(lightning_run) == {"model": {"beta": 4.0, "d_mode": "noise"}, "seed": 3}

    (image_row,) = [r for r in rows if "samples/prior" in r]
    assert image_row["trainer/global_step"] == 30
    value = image_row["samples/prior"]
    assert value["_type"] == "images/separated" and value["count"] == 2
    pngs = media_files(lightning_run, value)
    assert len(pngs) == 2 and all(p.is_file() for p in pngs)
    # A key with a slash becomes a sub-folder of media/images/.
    assert all(p.parent.name == "samples" for p in pngs)


def test_truncated_file_yields_complete_records_before_the_cut(plain_run, tmp_path):
    (path,) = find_wandb_files(plain_run)
    data = path.read_bytes()
    full = read_records(path)
    cut_file = tmp_path / "run-cut.wandb"

    counts = []
    # Every 1000th byte, plus the bytes around each block boundary (mid-split-record cuts).
    near_blocks = (b + d for b in range(BLOCK_SIZE, len(data), BLOCK_SIZE) for d in (-8, -1, 0, 1, 7, 8))
    cuts = sorted(c for c in {*range(7, len(data), 1000), *near_blocks} if c < len(data))
    for cut in cuts:
        cut_file.write_bytes(data[:cut])
        with warnings.catch_warnings():  # a cut that falls between records is not truncation
            warnings.simplefilter("ignore")
            part = read_records(cut_file)
        assert part == full[:len(part)], f"cut at {cut}: not a prefix of the full file"
        counts.append(len(part))
    assert counts == sorted(counts) and counts[0] == 0

    # One byte short loses exactly the last record, and the history before it is intact.
    cut_file.write_bytes(data[:-1])
    with pytest.warns(UserWarning, match="truncated"):
        assert read_records(cut_file) == full[:-1]
        rows = history(cut_file)
    assert [r["val/elbo"] for r in rows] == [elbo(i) for i in range(N_STEPS)]


def test_garbage_raises_clear_error(plain_run, tmp_path):
    garbage = tmp_path / "run-garbage.wandb"
    garbage.write_bytes(os.urandom(5000))
    with pytest.raises(WandbFileError, match="not a W&B run file"):
        read_records(garbage)

    garbage.write_bytes(b"")
    with pytest.raises(WandbFileError, match="too short"):
        read_records(garbage)

    # A real header followed by flipped bytes: the checksum catches it.
    data = bytearray(find_wandb_files(plain_run)[0].read_bytes())
    data[40] ^= 0xFF
    garbage.write_bytes(bytes(data))
    with pytest.raises(WandbFileError, match="checksum mismatch"):
        read_records(garbage)


def test_ambiguous_folder_is_an_error(plain_run, lightning_run, tmp_path):
    with pytest.raises(WandbFileError, match="exactly one"):
        history(tmp_path)  # no run at all
    assert len(find_wandb_files(plain_run.parent)) >= 2
    with pytest.raises(WandbFileError, match="exactly one"):
        history(plain_run.parent)


@pytest.mark.parametrize("kill", [["+callbacks.kill.step=6"],  # mid-epoch
                                  ["+callbacks.kill.phase=final_test"]])  # after the final val
def test_a_resumed_run_continues_its_wandb_run_with_every_step_once(wandb_env, tmp_path, kill):
    """SIGTERM, then the same command: both attempts write to one W&B run (the id kept in
    <run>/wandb/run-id), and its history holds every step once, with metrics.csv's values; rows
    the first attempt logged after its checkpoint (the final validation) are not logged again."""
    from conftest import make_cfg

    from genlab.train import train

    run_dir = tmp_path / "run"
    args = ["debug=smoke", "data=digits", "logger=default", "trainer.deterministic=true",
            "callbacks.samples=null", "callbacks.evaluation=null", "seed=3"]
    with pytest.raises(SystemExit) as stopped:
        train(make_cfg(run_dir, *args, "+callbacks.kill._target_=sigterm_at.SigtermAt", *kill))
    assert stopped.value.code == 128 + signal.SIGTERM
    train(make_cfg(run_dir, *args))
    import wandb

    wandb.teardown()  # the W&B service writes run files in the background; exit waits as this does

    files = find_wandb_files(run_dir)
    assert len(files) == 2  # one file per attempt (offline), both of one run
    stored = (run_dir / "wandb" / "run-id").read_text().strip()
    assert [run_id(f) for f in files] == [stored, stored]

    rows = [r for f in files for r in history(f)]
    train_steps = [r["trainer/global_step"] for r in rows if "train/loss" in r]
    assert train_steps == list(range(8))  # 2 epochs of 4 steps, seamless across the cut
    with open(run_dir / "metrics.csv", newline="") as f:
        logged = {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f) if r["train/loss"]}
    assert {r["trainer/global_step"]: r["train/loss"] for r in rows if "train/loss" in r} == logged
    val_steps = [r["trainer/global_step"] for r in rows if "val/elbo" in r]
    assert len(val_steps) == len(set(val_steps)) == 3  # two epochs and the final validation
    assert len([r for r in rows if "test/elbo" in r]) == 1


def test_a_kill_at_the_wandb_boundary_never_logs_a_row_twice(wandb_env, tmp_path):
    """SIGKILL just after a row's ledger line (W&B not yet called), a ledger line cut short (what a
    kill or a full disk in the middle of an append leaves), SIGKILL just after a W&B call, then the
    same command (issue 25 item 4). The ledger stays whole and names every (metric, step) once, so
    no attempt logs a row that an earlier one logged, and W&B holds each at most once.

    (Here the SIGKILLed attempts' offline W&B files hold none of their rows: wandb's service had
    not written them out. Those rows are missing from W&B, not doubled; the ledger trades a row
    lost at a kill for one never logged twice.)"""
    from conftest import BIN, DATA, make_cfg

    from genlab.train import train

    run_dir = tmp_path / "run"
    args = ["debug=smoke", "data=digits", "logger=default", "trainer.deterministic=true",
            "callbacks.samples=null", "callbacks.evaluation=null", "seed=3"]
    tests = os.path.dirname(__file__)
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")]))}

    def killed_at(step: int, after: bool) -> None:
        cmd = [str(BIN / "genlab-train"), *args, "+callbacks.kill._target_=sigterm_at.SigtermAt",
               "+callbacks.kill.phase=wandb_log", f"+callbacks.kill.step={step}",
               f"+callbacks.kill.after={str(after).lower()}", "+callbacks.kill.signal_name=SIGKILL",
               f"hydra.run.dir={run_dir}", f"paths.data_dir={DATA}"]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]

    killed_at(5, after=False)  # epoch 1: the next attempts continue from epoch 0's checkpoint
    ledger = run_dir / "wandb" / "logged-rows.jsonl"
    with open(ledger, "a") as f:
        f.write('{"step": 5, "ke')
    killed_at(6, after=True)
    train(make_cfg(run_dir, *args))
    import wandb

    wandb.teardown()

    def pairs(rows: list[dict]) -> list[tuple[str, int]]:  # Lightning adds "epoch" to every row
        return [(key, step) for step, keys in rows for key in keys if key != "epoch"]

    lines = [json.loads(line) for line in ledger.read_text().splitlines()]  # every line whole
    noted = pairs([(row["step"], row["keys"]) for row in lines])
    assert len(noted) == len(set(noted)), sorted(p for p in noted if noted.count(p) > 1)
    assert sorted(step for key, step in noted if key == "train/loss") == list(range(8))

    rows = [r for f in find_wandb_files(run_dir) for r in history(f)]
    stored = pairs([(r["trainer/global_step"], [k for k in r if not k.startswith(("_", "trainer/"))])
                    for r in rows])
    assert len(stored) == len(set(stored)) and set(stored) <= set(noted)
    assert ("test/elbo", 8) in stored
