"""genlab-train end to end on tiny runs: the run-directory contract, W&B, resume, sampling, errors."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
import wandb_offline
import yaml
from conftest import CONF, NO_EVAL, make_cfg, run_cli
from omegaconf import OmegaConf

from genlab import runs
from genlab import train as genlab_train
from genlab.config import ConfigError
from genlab.models import FAMILIES
from genlab.sample import main as sample_main
from genlab.train import train


@pytest.mark.parametrize("data", ["digits", "fashion_mnist", "dsprites"])
def test_vae_smoke_on_each_dataset(smoke, tmp_path, data):
    extra = ["data.batch_size=16", "data.eval_batch_size=32"] if data == "dsprites" else []
    run = smoke(tmp_path / data, f"data={data}", *extra)
    s = runs.read_summary(run)
    assert s["status"] == "ok", s
    for key in ("val/elbo", "test/elbo", "test/loglik", "val/recon", "val/kl"):
        assert math.isfinite(s[key]), key
    assert s["val/elbo"] < 0 and s["val/kl"] >= 0
    assert s["test/loglik"] >= s["test/loglik_elbo"]  # importance sampling tightens the bound
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "samples" / "generated_final.png").is_file()
    assert (run / "samples" / "reconstruction_final.png").is_file()


def test_every_family_has_a_config_of_its_own():
    assert sorted(p.stem for p in (CONF / "model").glob("*.yaml")) == sorted(FAMILIES)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_family_runs_with_its_defaults(tmp_path, family):
    """`genlab-train debug=smoke model=<family>` and nothing else (issue 25 item 3): a family's
    config picks what it needs from the other groups (the RBM binarises its data, the named-factor
    VAE takes dSprites, the classifier leaves out the sample grids and the FID evaluation)."""
    cfg = make_cfg(tmp_path / family, "debug=smoke", f"model={family}")
    train(cfg)
    s = runs.read_summary(tmp_path / family)
    assert s["status"] == "ok", s
    assert math.isfinite(s[cfg.objective.metric])


def test_run_directory_contract_through_the_cli(tmp_path):
    """The real command: .hydra/config.yaml, summary.json, metrics.csv, checkpoints, samples and
    a W&B offline run that carries the same val/elbo values as metrics.csv, and the images."""
    proc = run_cli("debug=smoke", "data=digits", "seed=3", "trainer.max_epochs=3",
                   f"paths.log_dir={tmp_path}", cwd=tmp_path)
    assert "test/elbo" in proc.stdout and "W&B offline run" in proc.stdout
    (run,) = runs.find_runs(tmp_path)
    cfg = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    assert cfg["seed"] == 3 and cfg["model"]["latent_dim"] == 16

    s = runs.read_summary(run)
    assert s["status"] == "ok" and s["seed"] == 3 and s["git_commit"]
    assert {"val/elbo", "test/elbo", "test/loglik"} <= s.keys()

    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert "last.ckpt" in ckpts and any(n.startswith("best-epoch") for n in ckpts)
    assert s["best_checkpoint"].endswith(next(n for n in ckpts if n.startswith("best")))
    assert {"generated_epoch000.png", "generated_epoch002.png", "generated_final.png"} <= {
        p.name for p in (run / "samples").iterdir()}

    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    csv_val = [float(r["val/elbo"]) for r in rows if r.get("val/elbo")]
    assert len(csv_val) == 3 + 1  # one per epoch, plus the validation of the best checkpoint
    assert any(r.get("train/elbo") for r in rows) and any(r.get("test/elbo") for r in rows)

    (wandb_file,) = wandb_offline.find_wandb_files(run)
    hist = wandb_offline.history(wandb_file)
    wb_val = [h["val/elbo"] for h in hist if "val/elbo" in h]
    assert wb_val == pytest.approx(csv_val, rel=1e-6)
    images = [h["samples/generated"] for h in hist if "samples/generated" in h]
    assert len(images) == 3 + 1  # every epoch and the final grid
    assert all(p.is_file() for p in wandb_offline.media_files(wandb_file, images[-1]))
    assert wandb_offline.config(wandb_file)["model"]["latent_dim"] == 16  # the resolved config
    assert wandb_offline.summary(wandb_file)["test/elbo"] == pytest.approx(s["test/elbo"])


def test_resume_continues_from_the_checkpoint(smoke, tmp_path):
    first = smoke(tmp_path / "a", "data=digits", "trainer.max_epochs=1")
    s1 = runs.read_summary(first)
    assert s1["global_step"] == 4
    ckpt = first / "checkpoints" / "last.ckpt"
    resumed = smoke(tmp_path / "b", "data=digits", "trainer.max_epochs=3", f"ckpt_path={ckpt}")
    s2 = runs.read_summary(resumed)
    assert s2["status"] == "ok" and s2["global_step"] == 12 and s2["epochs"] == 3
    # training really continued from the saved weights, not from scratch
    state = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["epoch"] == 2 and state["global_step"] == 12


def test_missing_or_corrupt_checkpoint_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    for path, words in [(tmp_path / "missing.ckpt", "no such checkpoint"), (bad, "not a readable")]:
        with pytest.raises(runs.RunReadError, match=words):
            train(make_cfg(tmp_path / "run", "debug=smoke", "logger=csv", "data=digits",
                           f"ckpt_path={path}"))
        with pytest.raises(SystemExit) as stop:
            sample_main([f"ckpt={path}", f"out={tmp_path / 'x.png'}"])
        assert stop.value.code == 2 and words in capsys.readouterr().err


def test_genlab_sample_writes_grids(smoke, tmp_path, capsys):
    run = smoke(tmp_path / "run", "data=digits")
    ckpt = run / "checkpoints" / "last.ckpt"
    from PIL import Image

    for mode, n in [("prior", 16), ("interpolate", 4), ("reconstruct", 8)]:
        out = tmp_path / f"{mode}.png"
        sample_main([f"ckpt={ckpt}", f"n={n}", f"out={out}", f"mode={mode}", "steps=6"])
        w, h = Image.open(out).size
        assert w > 8 and h > 8
    # a 4 x 6 interpolation grid: 6 columns of 8 px + padding
    assert Image.open(tmp_path / "interpolate.png").size == (6 * 10 + 2, 4 * 10 + 2)
    with pytest.raises(SystemExit) as stop:
        sample_main([f"ckpt={ckpt}", "mode=chain"])
    assert stop.value.code == 2
    assert "mode='chain' is invalid for VAE; allowed: prior" in capsys.readouterr().err


@pytest.mark.parametrize("override, message", [
    ("model.latent_dim=0", "model.latent_dim=0 is invalid; allowed: a positive integer"),
    ("model.objective.beta=-1", "model.objective.beta=-1 is invalid; allowed: a number >= 0"),
    ("model.likelihood=poisson", "model.likelihood='poisson' is invalid; allowed: bernoulli | gaussian"),
    ("data.batch_size=0", "data.batch_size=0 is invalid; allowed: a positive integer"),
])
def test_bad_values_fail_before_training(tmp_path, override, message):
    with pytest.raises(ConfigError) as e:
        train(make_cfg(tmp_path, "debug=smoke", "logger=csv", "data=digits", override))
    assert str(e.value) == message
    s = runs.read_summary(tmp_path)  # the run's record says why it failed ...
    assert s["status"] == "failed" and message in s["error"] and "traceback" not in s
    assert not (tmp_path / "checkpoints").exists()  # ... before any training started


def test_cli_errors_are_clear(tmp_path):
    proc = run_cli("model=nonexistent", cwd=tmp_path, check=False)
    assert proc.returncode != 0
    assert "Could not find 'model/nonexistent'" in proc.stderr and "vae" in proc.stderr
    proc = run_cli("debug=smoke", "data=digits", "model.latent_dim=-3", f"paths.log_dir={tmp_path}",
                   cwd=tmp_path, check=False)
    assert proc.returncode != 0
    assert "model.latent_dim=-3 is invalid; allowed: a positive integer" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_summary_is_json_with_status(tmp_path):
    runs.write_summary(tmp_path, {"status": "ok", "val/elbo": float("nan")})
    assert json.loads((tmp_path / "summary.json").read_text())["val/elbo"] == "nan"
    with pytest.raises(ValueError):
        runs.write_summary(tmp_path, {"status": "great"})


def test_each_family_has_its_own_objective(smoke, tmp_path):
    # model=dcgan alone must work: its checkpoints rank by a metric it logs every validation
    run = smoke(tmp_path / "gan", "data=digits", "model=dcgan", "model.generator.base_channels=8",
                "model.discriminator.base_channels=8", *NO_EVAL)
    s = runs.read_summary(run)
    assert s["status"] == "ok" and s["objective"] == "val/stat_fd"
    assert "best-epoch" in s["best_checkpoint"]
    assert make_cfg(tmp_path, "model=dae").objective.metric == "val/recon"


@pytest.mark.parametrize("flags, cuda, expected", [
    ({"amx_bf16", "avx2"}, False, "bf16-mixed"),
    ({"avx512_bf16"}, False, "bf16-mixed"),
    ({"avx2", "avx512f"}, False, "32-true"),   # no native bfloat16: autocast would emulate it
    (set(), False, "32-true"),                  # flags unreadable
])
def test_precision_auto_picks_bfloat16_only_where_it_is_native(monkeypatch, flags, cuda, expected):
    monkeypatch.setattr(genlab_train, "cpu_flags", lambda: flags)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    cfg = OmegaConf.create({"accelerator": "auto", "precision": "auto"})
    assert genlab_train.resolve_precision(cfg) == expected
    # an explicit choice is the user's, whatever the hardware
    assert genlab_train.resolve_precision(OmegaConf.create({"precision": "bf16-mixed"})) == "bf16-mixed"


def test_precision_auto_reaches_the_trainer(smoke, tmp_path):
    """The summary names the precision the run trained in: auto resolved for this machine."""
    s = runs.read_summary(smoke(tmp_path, "data=digits", "trainer.precision=auto", *NO_EVAL))
    native = genlab_train.NATIVE_BF16_CPU_FLAGS & genlab_train.cpu_flags()
    assert s["status"] == "ok"
    assert s["precision"] == ("bf16-mixed" if native else "32-true")
