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
from genlab.metrics.image_stats import frechet_distance, stat_fd
from genlab.models.adversarial import LOSSES
from genlab.models.games import GAMES
from genlab.models.gan import DCGAN, RestorationGAN
from genlab.sample import main as sample_main

# tiny networks: the runs test the wiring, not the quality
TINY = ["model.generator.base_channels=8", "model.discriminator.base_channels=8"]


def tiny(generator: str = "dcgan", base_channels: int = 8, **discriminator) -> dict:
    """A GAN's network nodes with `base_channels` (and the discriminator's other settings)."""
    return {"generator": {"name": generator, "base_channels": base_channels},
            "discriminator": {"name": "conv", "base_channels": base_channels, **discriminator}}


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


# every game (d_mode) with two corruptions; the other options vary across the runs so that each loss,
# penalty, schedule, EMA, D normalisation and head is exercised once without multiplying the runs
# (the penalties need a D normalisation other than the preset's batch norm)
DCGAN_RUNS = [  # the first keeps the sample-quality callback on: it must work with generate()
    ("plain", "blur", ["allow_unused=[corruption]", "model.loss=hinge"]),
    ("plain", "gaussian", ["allow_unused=[corruption]", "model.ema_decay=0.9", "model.discriminator.head=patch",
                                  "model.discriminator.norm=spectral"]),
    ("instance_noise", "blur", ["corruption.schedule.kind=linear", "corruption.schedule.images=100"]),
    ("instance_noise", "gaussian", ["corruption.schedule.kind=adaptive", "model.r1_gamma=1.0",
                                    "model.discriminator.norm=instance", "model.discriminator.head=patch",
                                    "model.ada_interval=2"]),
    ("three_class", "masking", ["model.ema_decay=0.99", "model.discriminator.head=patch"]),
    ("three_class", "blur", ["corruption.level_range=[0.5,2.0]", "model.r1_gamma=0.5", "model.discriminator.norm=none"]),
    ("noise_head", "gaussian", ["corruption.level_range=[0.0,0.2]", "model.discriminator.head=patch"]),
    ("noise_head", "salt_pepper", ["model.loss=wgan_gp", "model.n_critic=2",
                                   "model.discriminator.norm=layer", "model.discriminator.head=patch"]),
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
    ({"discriminator": {"name": "conv", "norm": "group"}}, "model.discriminator.norm="),
    ({"discriminator": {"name": "conv", "norm": "batch"}, "r1_gamma": 1.0}, "model.discriminator.norm="),
    ({"discriminator": {"name": "conv", "norm": "batch"}, "loss": "wgan_gp"}, "model.discriminator.norm="),
    ({"discriminator": {"name": "conv", "head": "pixel"}}, "model.discriminator.head="),
    ({"discriminator": "patchgan"}, "model.discriminator="),
    ({"generator": {"name": "dcgan", "base_channels": 0}}, "model.generator.base_channels="),
    ({"ada_interval": 0}, "model.ada_interval="),
    ({"d_mode": {"name": "noise_head", "aux_weight_g": -1}}, r"model.d_mode.aux_weight_g="),
    ({"d_mode": {"name": "plain", "aux_weight_g": 1}}, r"model.d_mode.aux_weight_g is not a setting of plain"),
    ({"loss": {"name": "wgan_gp", "gp_weight": -1}}, r"model.loss.gp_weight="),
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


@pytest.mark.parametrize("d_mode", GAMES)
def test_d_step_moves_only_d_and_g_step_only_g(d_mode):
    torch.manual_seed(0)
    model = DCGAN([1, 28, 28], corruption=Corruption("blur", 1.0, schedule={"kind": "adaptive"}),
                  d_mode=d_mode, latent_dim=8, ada_interval=1, **tiny())
    seen = []
    model.corruption.update = seen.append  # record the feedback the adaptive schedule gets
    start, before_d, before_g, end = one_batch(model)
    assert torch.equal(start["generator.net.0.weight"], before_d["generator.net.0.weight"])
    assert changed(before_d, before_g, "discriminator.") and not changed(before_d, before_g, "generator.")
    assert changed(before_g, end, "generator.") and not changed(before_g, end, "discriminator.")
    # the schedule heard D's real sign accuracy once and counted the batch's real images
    assert len(seen) == 1 and 0.0 <= seen[0] <= 1.0
    assert model.corruption.images_seen == 8


def test_restoration_steps_move_the_right_networks():
    torch.manual_seed(0)
    model = RestorationGAN([1, 28, 28], corruption=Corruption("masking", 0.3), degraded_d=True,
                           **tiny("unet"))
    start, before_d, before_g, end = one_batch(model)
    for d in ("discriminator.", "discriminator_degraded."):
        assert changed(before_d, before_g, d) and not changed(before_g, end, d)
    assert not changed(before_d, before_g, "generator.") and changed(before_g, end, "generator.")


# --- pieces -------------------------------------------------------------------------------------


def test_three_class_generator_loss_is_cross_entropy_on_real():
    model = DCGAN([1, 28, 28], d_mode="three_class", latent_dim=8, **tiny())
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
    from genlab.metrics.image_stats import image_statistics, moments

    x = torch.rand(200, 1, 28, 28, generator=torch.Generator().manual_seed(0)) ** 3
    stats = lambda y: moments(torch.from_numpy(image_statistics(y)))  # noqa: E731
    assert stat_fd(stats(x), stats(x)) == pytest.approx(0.0, abs=1e-6)
    mild = stat_fd(stats(x), stats(Corruption("blur", 0.5)(x)))
    strong = stat_fd(stats(x), stats(Corruption("blur", 2.0)(x)))
    assert 0 < mild < strong


# --- the discriminator head: global or patch -------------------------------------------------------


@pytest.fixture(scope="module")
def fmnist():
    """32 Fashion-MNIST validation images in [0, 1]."""
    from conftest import DATA

    from genlab.data import FashionMNISTDataModule

    dm = FashionMNISTDataModule(root=str(DATA))
    dm.setup()
    return dm.images("val", 32)


@pytest.mark.parametrize("d_mode", GAMES)
def test_patch_head_judges_every_location(fmnist, d_mode):
    torch.manual_seed(0)
    model = DCGAN([1, 28, 28], corruption=Corruption("gaussian", 0.1), d_mode=d_mode, **tiny(head="patch"))
    out = model.d_out(fmnist)
    assert out.shape == (32, GAMES[d_mode].outputs, 49)  # 28 -> 14 -> 7: one verdict per 7x7 cell
    assert model.realness(out).shape == (32, 49)
    # each location sees only its receptive field: changing one corner moves the far corner not at all
    x = fmnist[:1].clone()
    x[..., :6, :6] = 1 - x[..., :6, :6]
    moved = (model.d_out(x) - model.d_out(fmnist[:1])).abs().sum(1)[0].reshape(7, 7)
    assert moved[0, 0] > 0 and moved[6, 6] == 0
    glob = DCGAN([1, 28, 28], d_mode=d_mode, **tiny()).d_out(fmnist)
    assert glob.shape == (32, GAMES[d_mode].outputs, 1)


@pytest.mark.parametrize("loss", ["ns", "hinge", "wgan_gp"])
def test_patch_losses_are_location_averages(fmnist, loss):
    """D's and G's losses with a patch head equal the mean over locations of the loss each location
    would give alone (its own one-location game)."""
    node = {"name": loss, "gp_weight": 0.0, "wgan_drift": 0.0} if loss == "wgan_gp" else loss
    adversarial = LOSSES.build(node)
    torch.manual_seed(0)
    model = DCGAN([1, 28, 28], loss=node, **tiny(head="patch", norm="layer"))
    fake = torch.rand_like(fmnist) ** 2
    s_real, s_fake = model.realness(model.d_out(fmnist)), model.realness(model.d_out(fake))
    d_loss, _ = model.discriminator_loss(fmnist, fake)
    per_location = [adversarial.d(s_real[:, [i]], s_fake[:, [i]]) for i in range(49)]
    assert torch.allclose(d_loss, torch.stack(per_location).mean(), atol=1e-6)
    g_loss, _ = model.generator_loss(fake)
    per_location = [adversarial.g(s_fake[:, [i]]) for i in range(49)]
    assert torch.allclose(g_loss, torch.stack(per_location).mean(), atol=1e-6)


@pytest.mark.parametrize("d_norm", ["none", "layer", "instance", "spectral"])
def test_r1_is_per_image(fmnist, d_norm):
    """With a normalisation that never mixes images, R1 of a batch is the mean of each image's R1
    computed alone (so no image's penalty depends on the others)."""
    from genlab.models.adversarial import r1_penalty

    torch.manual_seed(0)
    d = DCGAN([1, 28, 28], **tiny(norm=d_norm)).discriminator.eval()
    x = (2 * fmnist[:8] - 1).requires_grad_(True)
    batch = r1_penalty(d(x)[:, 0], x)
    alone = []
    for i in range(8):
        xi = x[i : i + 1].detach().requires_grad_(True)
        alone.append(r1_penalty(d(xi)[:, 0], xi))
    assert torch.allclose(batch, torch.stack(alone).mean(), rtol=1e-4)
    assert batch > 0


def test_patch_r1_estimates_the_location_average(fmnist):
    """The single-pass R1 of a patch head (random signs per location) averages to the exact
    E_locations |grad_x s_l|^2, computed here with one backward pass per location."""
    from genlab.models.adversarial import r1_penalty

    torch.manual_seed(0)
    d = DCGAN([1, 28, 28], **tiny(head="patch", norm="none")).discriminator
    x = (2 * fmnist[:4] - 1).requires_grad_(True)
    s = d(x)[:, 0]
    exact = torch.stack([torch.autograd.grad(s[:, i].sum(), x, retain_graph=True)[0].pow(2).flatten(1).sum(1)
                         for i in range(49)]).mean()
    draws = torch.stack([r1_penalty(s, x).detach() for _ in range(300)])
    standard_error = draws.std() / math.sqrt(len(draws))
    assert abs(draws.mean() - exact) < 4 * standard_error + 1e-3 * exact
    assert draws.std() > 0  # a real estimate: the signs do change it


# --- extension point: a discriminator game, settings included, is one class ------------------------


def test_a_new_d_mode_is_one_class(smoke, tmp_path):
    """A toy game defined here with a setting of its own, and nothing else (no DCGAN edit): D also
    judges the real images upside down as fake, weighted by `flip_weight` (a game no one should
    play; it only has to be a different one). A user adds its conf file; the run sets the setting
    in the game's own node, and the checkpoint rebuilds the game with it."""
    import dataclasses

    from genlab.models import load_model
    from genlab.models.games import Game
    from genlab.settings import Settings, nonnegative

    @dataclasses.dataclass
    class UpsideDownSettings(Settings):
        flip_weight: float = nonnegative(1.0)

    @GAMES.register("upside_down_test")
    class UpsideDown(Game):
        Settings = UpsideDownSettings
        uses_corruption = False

        def d_loss(self, out_real, out_fake, real):
            flipped = self.score(real.flip(-2))
            loss, logs = super().d_loss(out_real, out_fake, real)
            return loss + self.settings.flip_weight * F.softplus(self.realness(flipped)).mean(), logs

    conf = tmp_path / "conf" / "model" / "d_mode"
    conf.mkdir(parents=True)
    (conf / "upside_down_test.yaml").write_text("name: upside_down_test\nflip_weight: 1.0\n")
    try:
        run = smoke(tmp_path / "run", f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "data=digits",
                    "model=dcgan", "model/d_mode=upside_down_test", "model.d_mode.flip_weight=0.5",
                    "objective.metric=val/stat_fd", "model.latent_dim=8", "trainer.max_epochs=1",
                    *TINY, *NO_EVAL)
        check_run(run, "val/stat_fd")
        model, _ = load_model(run / "checkpoints" / "last.ckpt")
        assert isinstance(model.game, UpsideDown) and model.game.settings.flip_weight == 0.5
        assert model.hparams.d_mode == {"name": "upside_down_test", "flip_weight": 0.5}
        with pytest.raises(ConfigError, match="model.d_mode.flip_weight=-1 is invalid"):
            DCGAN([1, 28, 28], d_mode={"name": "upside_down_test", "flip_weight": -1})
    finally:
        GAMES.remove("upside_down_test")
    assert "upside_down_test" not in GAMES


# --- no host synchronisation inside a training step ----------------------------------------------


def test_training_steps_wait_for_the_device_only_for_the_adaptive_schedule(monkeypatch):
    """Tensor -> Python conversions (item, float, bool, tolist) are the host synchronisations of a
    GPU run. Over 8 batches genlab's GAN path makes exactly one per ada_interval D steps, the
    adaptive schedule's update, and none with any other schedule. (Lightning's and Adam's own
    conversions of CPU-side counters are not genlab's and are not counted.)"""
    import sys

    calls = []

    def counting(name):
        original = getattr(torch.Tensor, name)

        def wrapper(self, *args, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if "genlab" in caller and "site-packages" not in caller:
                calls.append((name, caller.rsplit("/", 1)[-1], sys._getframe(1).f_lineno))
            return original(self, *args, **kwargs)
        return wrapper

    class Count(pl.Callback):
        def on_train_batch_start(self, *args):
            for name in ("item", "__float__", "__bool__", "__int__", "tolist"):
                monkeypatch.setattr(torch.Tensor, name, counting(name))

        def on_train_batch_end(self, *args):
            monkeypatch.undo()

    x = torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    for schedule, expected in (({"kind": "adaptive"}, 2), ({"kind": "linear", "images": 100}, 0)):
        torch.manual_seed(0)
        model = DCGAN([1, 28, 28], corruption=Corruption("gaussian", 0.1, schedule=schedule),
                      d_mode="noise_head", latent_dim=8, ema_decay=0.9, ada_interval=4, r1_gamma=1.0,
                      **tiny(norm="layer"))
        calls.clear()
        trainer = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False,
                             num_sanity_val_steps=0, callbacks=[Count()])
        trainer.fit(model, train_dataloaders=DataLoader(TensorDataset(x), batch_size=8))
        assert len(calls) == expected, (schedule, calls)
        assert all(c[1] == "adversarial.py" for c in calls)


# --- the ablation grid -----------------------------------------------------------------------------


def test_ablation_grid_runs_each_distinct_configuration_once(tmp_path):
    """Every configuration of the ablation preset differs from every other in what reaches the
    model; modes that ignore the corruption run once, with none; and the grid holds what issue 10
    asks for (each mode x blur, gaussian, rotate_crop, and instance noise with a decaying blur)."""
    import yaml
    from conftest import CONF

    from genlab.models import build_model

    sweep = yaml.safe_load((CONF / "experiment" / "ablation_blur_d.yaml").read_text())["hydra"]["sweeper"]
    arms = sweep["params"]["arm"].split(",")
    assert sweep["params"]["seed"] == "0,1,2" and len(sweep["params"]) == 2
    assert sorted(arms) == sorted(make_cfg(tmp_path, "experiment=ablation_blur_d").arms)
    seen, full = {}, set()
    for arm in arms:
        c = make_cfg(tmp_path, "experiment=ablation_blur_d", f"arm={arm}")
        model = build_model(c.model, [1, 28, 28])
        assert isinstance(model, DCGAN)
        corruption = model.corruption.config()
        full.add(json.dumps([model.hparams.d_mode, corruption], sort_keys=True))
        seen[arm] = (model.game.registry_name, corruption["kind"], corruption["schedule"]["kind"])
        if not model.game.uses_corruption:
            assert corruption["kind"] == "none", arm
    assert len(full) == len(arms)  # no two runs of a seed are the same run
    for mode in ("instance_noise", "three_class", "noise_head"):
        for kind in ("blur", "gaussian", "rotate_crop"):
            assert (mode, kind, "constant") in seen.values()
    assert ("plain", "none", "constant") in seen.values()
    assert ("instance_noise", "blur", "linear") in seen.values()
    for kind in ("translation", "cutout", "diffaugment"):  # DiffAugment's (issue 23)
        assert ("instance_noise", kind, "constant") in seen.values()
