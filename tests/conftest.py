"""Shared test helpers: compose the real configs and run real (tiny) trainings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from slurm_cluster import slurm_cluster  # noqa: F401  (a real one-node SLURM, session-wide)

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
DATA = REPO / "data"  # shared by all tests: Fashion-MNIST is decompressed here once
BIN = Path(sys.executable).parent
# switch off the sample-quality callback (FID on generated images) in runs that test other wiring
NO_EVAL = ["callbacks.evaluation=null"]

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# tiny networks gain nothing from a second thread, and on a shared 2-core machine oversubscribed
# threads made the GAN tests ~5x slower
torch.set_num_threads(1)


def mnist_raw() -> Path:
    """DATA/MNIST/raw holding the four verified MNIST files, fetched on first use
    (genlab.data.mnist; `make install` fetches them). Where they cannot be had, the calling test
    fails in CI (the CI variable set, as .ci/run does) and is skipped elsewhere, with the reason."""
    from genlab.data.mnist import ensure_mnist

    try:
        return ensure_mnist(DATA)
    except FileNotFoundError as e:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs MNIST (make install fetches it): {e}")
        pytest.skip(f"MNIST is not on this machine and could not be fetched: {e}")


def make_cfg(run_dir: Path, *overrides: str) -> DictConfig:
    """The composed config `genlab-train` would use, with its output in run_dir."""
    from genlab.sweep import register_resolvers

    register_resolvers()  # as genlab-train's setup() does before Hydra composes
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=[f"paths.output_dir={run_dir}", f"paths.data_dir={DATA}",
                                           *overrides])


def run_cli(*args: str, cwd: Path, check: bool = True, timeout: int = 600,
            exe: str = "genlab-train") -> subprocess.CompletedProcess:
    """Run a genlab console script as a user would; data shared through GENLAB data_dir."""
    cmd = [str(BIN / exe), *args]
    if exe == "genlab-train":
        cmd.append(f"paths.data_dir={DATA}")
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-5000:]}")
    return proc


@pytest.fixture
def smoke():
    """Compose and train a smoke run in-process: smoke(tmp_path, 'data=digits', ...) -> run_dir."""
    from genlab.train import train

    def _run(run_dir: Path, *overrides: str, logger: str = "csv"):
        cfg = make_cfg(run_dir, "debug=smoke", f"logger={logger}", *overrides)
        train(cfg)
        return run_dir

    return _run
