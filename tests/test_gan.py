"""DCGAN (four discriminator modes) and restoration GAN: real tiny trainings through genlab-train's
`train(cfg)`, checkpoints genlab-sample can read, gradients that reach the right network, and bad
options that stop before training."""

import csv
import json
import math

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from conftest import NO_EVAL, make_cfg
from hydra.errors import InstantiationException
from torch.utils.data import DataLoader, TensorDataset

from genlab.config import ConfigError
from genlab.corruption import Corruption
from genlab.models.gan import D_MODES, DCGAN, RestorationGAN, frechet_distance, stat_fd
from genlab.sample import main as sample_main

# tiny networks: the runs test the wiring, not the quality
TINY = ["model.base_channels=8"]





def train_metrics(run_dir) -> dict[str, list[float]]:
    """Every logged train/* value in metrics.csv, by name."""
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    out: dict[str, list[float]] = {}
    for row in rows:
        for k, v in row.items():
            if k.startswith("train/") and v != "":
                out.setdefault(k, []).append(float(v))
    return out


def check_run(run_dir, metric: str) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "ok", summary
    assert math.isfinite(summary[metric])
    logged = train_metrics(run_dir)
    for key in ("train/d_loss", "train/g_loss", "train/d_real_acc", "train/corruption_level"):
        assert logged.get(key), f"{key} never logged"
        assert all(math.isfinite(v) for v in logged[key]), (key, logged[key])
    assert list((run_dir / "samples").glob("*_final.png")), "no sample grids written"
    return summary


# every d_mode with two corruptions; the other options vary across the runs so that each loss,
# penalty, schedule and EMA is exercised once without multiplying the runs
DCGAN_RUNS = [  # the first keeps the sample-quality callback on: it must work with generate()
    ("plain", "blur", ["model.loss=hinge"]),
    ("plain", "gaussian", ["model.ema_decay=0.9"]),
    ("instance_noise", "blur", ["corruption.schedule.kind=linear", "corruption.schedule.images=100"]),
    ("instance_noise", "gaussian", ["corruption.schedule.kind=adaptive", "model.r1_gamma=1.0"]),
    ("three_class", "masking", ["model.ema_decay=0.99"]),
    ("three_class", "blur", ["corruption.level_range=[0.5,2.0]", "model.r1_gamma=0.5"]),
    ("noise_head", "gaussian", ["corruption.level_range=[0.0,0.2]"]),
    ("noise_head", "salt_pepper", ["model.loss=wgan_gp", "model.n_critic=2"]),
]
DCGAN_RUNS = DCGAN_RUNS[:1] + [(m, c, [*extra, *NO_EVAL]) for m, c, extra in DCGAN_RUNS[1:]]


@pytest.mark.parametrize(("d_mode", "corruption", "extra"), DCGAN_RUNS,
                         ids=[f"{m}-{c}" for m, c, _ in DCGAN_RUNS])
def test_dcgan_trains_and_samples(smoke, tmp_path, d_mode, corruption, extra):
    run = smoke(tmp_path / "run", "model=dcgan", f"model.d_mode={d_mode}", f"corruption={corruption}",
                "objective.metric=val/stat_fd", "objective.mode=min", "model.latent_dim=16",
                "trainer.max_epochs=1", *TINY, *extra)
    summary = check_run(run, "val/stat_fd")
    assert summary["val/stat_fd"] >= 0
    out = tmp_path / "samples.png"
    sample_main([f"ckpt={run / 'checkpoints' / 'last.ckpt'}", "n=16", f"out={out}"])
    assert out.stat().st_size > 0
    if "model.n_critic=2" in extra:  # one G step per two D steps
        logged = train_metrics(run)
        assert len(logged["train/g_loss"]) < len(logged["train/d_loss"])


def test_restoration_gan_trains_and_samples(smoke, tmp_path):
    run = smoke(tmp_path / "run", "model=restoration_gan", "corruption=blur",
                "objective.metric=val/psnr", "objective.mode=max", "trainer.max_epochs=1",
                "model.degraded_d=true", "model.loss=wgan_gp", "model.r1_gamma=1.0",
                "model.ema_decay=0.9", "model.n_fixed=8", *TINY, *NO_EVAL)
    summary = check_run(run, "val/psnr")
    assert math.isfinite(summary["val/psnr_input"])
    assert "train/consistency" in train_metrics(run)
    ckpt = run / "checkpoints" / "last.ckpt"
    for mode in ("prior", "restore"):
        out = tmp_path / f"{mode}.png"
        sample_main([f"ckpt={ckpt}", "n=12", f"mode={mode}", f"out={out}"])
        assert out.stat().st_size > 0
    # generate() works from the checkpoint alone: the stored real images came along, not zeros
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    assert state["fixed_real"].abs().sum() > 0


def test_bad_d_mode_fails_before_training(tmp_path):
    from genlab.train import train

    cfg = make_cfg(tmp_path / "run", "debug=smoke", "logger=csv", "model=dcgan", "model.d_mode=blurry",
                   "corruption=blur", "objective.metric=val/stat_fd")
    with pytest.raises((ConfigError, InstantiationException)) as err:
        train(cfg)
    message = str(err.value)
    assert "model.d_mode='blurry'" in message
    assert "plain | instance_noise | three_class | noise_head" in message
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize(("kwargs", "key"), [
    ({"d_mode": "noise"}, "model.d_mode="),
    ({"d_mode": "three_class", "loss": "hinge"}, "model.loss="),
    ({"loss": "wgan"}, "model.loss="),
    ({"ema_decay": 1.5}, "model.ema_decay="),
    ({"betas": [0.5]}, "model.betas="),
    ({"r1_gamma": -1.0}, "model.r1_gamma="),
])
def test_bad_options_name_their_key(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        DCGAN([1, 28, 28], **kwargs)


# --- which network each step moves --------------------------------------------------------------


class Snapshots(pl.Callback):
    """Parameters at the batch start, before each optimizer step (D's, then G's) and at the end."""

    def __init__(self):
        self.at: list[dict[str, torch.Tensor]] = []

    def _take(self, module):
        self.at.append({k: p.detach().clone() for k, p in module.named_parameters()})

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self._take(module)

    def on_before_optimizer_step(self, trainer, module, optimizer):
        self._take(module)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self._take(module)


def changed(a: dict, b: dict, prefix: str) -> bool:
    names = [k for k in a if k.startswith(prefix)]
    assert names, prefix
    return any(not torch.equal(a[k], b[k]) for k in names)


def one_batch(model, n=8):
    snaps = Snapshots()
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, callbacks=[snaps])
    x = torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    trainer.fit(model, train_dataloaders=DataLoader(TensorDataset(x), batch_size=n))
    return snaps.at


@pytest.mark.parametrize("d_mode", D_MODES)
def test_d_step_moves_only_d_and_g_step_only_g(d_mode):
    torch.manual_seed(0)
    model = DCGAN([1, 28, 28], Corruption("blur", 1.0), d_mode=d_mode, latent_dim=8, base_channels=8)
    seen = []
    model.corruption.update = seen.append  # record the feedback the adaptive schedule would get
    start, before_d, before_g, end = one_batch(model)
    assert torch.equal(start["generator.net.0.weight"], before_d["generator.net.0.weight"])
    assert changed(before_d, before_g, "discriminator.") and not changed(before_d, before_g, "generator.")
    assert changed(before_g, end, "generator.") and not changed(before_g, end, "discriminator.")
    # the schedule heard D's real sign accuracy once and counted the batch's real images
    assert len(seen) == 1 and 0.0 <= seen[0] <= 1.0
    assert model.corruption.images_seen == 8


def test_restoration_steps_move_the_right_networks():
    torch.manual_seed(0)
    model = RestorationGAN([1, 28, 28], Corruption("masking", 0.3), base_channels=8, degraded_d=True)
    start, before_d, before_g, end = one_batch(model)
    for d in ("discriminator.", "discriminator_degraded."):
        assert changed(before_d, before_g, d) and not changed(before_g, end, d)
    assert not changed(before_d, before_g, "generator.") and changed(before_g, end, "generator.")


# --- pieces -------------------------------------------------------------------------------------


def test_three_class_generator_loss_is_cross_entropy_on_real():
    model = DCGAN([1, 28, 28], d_mode="three_class", latent_dim=8, base_channels=8)
    logits = torch.randn(16, 3)
    s = model.realness(logits)
    ce = F.cross_entropy(logits, torch.zeros(16, dtype=torch.long), reduction="none")
    assert torch.allclose(F.softplus(-s), ce, atol=1e-5)


def test_frechet_distance_closed_form():
    d = 5
    mu = torch.arange(d, dtype=torch.float64)
    # N(0, I) vs N(mu, 4 I): |mu|^2 + d (1 + 4 - 2 * 2)
    value = frechet_distance(torch.zeros(d, dtype=torch.float64), torch.eye(d, dtype=torch.float64),
                             mu, 4 * torch.eye(d, dtype=torch.float64))
    assert value == pytest.approx(float(mu.pow(2).sum()) + d, rel=1e-9)


def test_stat_fd_is_zero_for_one_set_and_grows_with_blur():
    from genlab.models.gan import moments
    from genlab.probe import image_statistics

    x = torch.rand(200, 1, 28, 28, generator=torch.Generator().manual_seed(0)) ** 3
    stats = lambda y: moments(torch.from_numpy(image_statistics(y)))  # noqa: E731
    assert stat_fd(stats(x), stats(x)) == pytest.approx(0.0, abs=1e-6)
    mild = stat_fd(stats(x), stats(Corruption("blur", 0.5)(x)))
    strong = stat_fd(stats(x), stats(Corruption("blur", 2.0)(x)))
    assert 0 < mild < strong
