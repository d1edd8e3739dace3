"""model=named_gan: a DCGAN whose first latent units carry dSprites' named factors, read back by D's
semi-supervised InfoGAN head (genlab.models.factor_heads), and the commanded-factor measurement
both named families share (genlab.callbacks.commanded, genlab.metrics.orientation)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from conftest import make_cfg

from genlab.callbacks.commanded import commanded_error_deg
from genlab.capabilities import NamedGeneration
from genlab.config import ConfigError
from genlab.data import DSpritesDataModule
from genlab.data.dsprites import FACTOR_SIZES, SYMMETRY
from genlab.metrics import orientation
from genlab.models import DCGAN
from genlab.models.factor_heads import SemiSupervisedInfo, SSInfoSettings, code_error
from genlab.models.named import NamedUnits

ORIENTATION = {"orientation": "circle"}


def named_gan(**kw) -> DCGAN:
    torch.manual_seed(0)
    kw.setdefault("named_factors", ORIENTATION)
    return DCGAN(image_shape=(1, 64, 64), latent_dim=kw.pop("latent_dim", 6),
                 generator={"name": "dcgan", "base_channels": 8},
                 discriminator={"name": "conv", "base_channels": 8}, **kw)


def factors_of(n: int, orientation: torch.Tensor | None = None, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    f = torch.stack([torch.randint(s, (n,), generator=g) for s in FACTOR_SIZES], 1)
    if orientation is not None:
        f[:, 2] = orientation
    return f


# -- the head's losses -------------------------------------------------------------------------------
def test_ss_info_losses_on_a_known_case():
    named = NamedUnits(ORIENTATION, latent_dim=4, labelled_fraction=1.0, labelled_seed=0)
    named.bind_data(DSpritesDataModule())
    head = SemiSupervisedInfo(SSInfoSettings(aux_weight_d=2.0, aux_weight_d_fake=3.0, aux_weight_g=5.0),
                              named=named)
    assert head.outputs == 2
    # two real images at orientation level 0: target (cos 0, sin 0) = (1, 0) for any shape
    factors = factors_of(2, orientation=torch.tensor([0, 0]))
    pred_real = torch.tensor([[[1.0], [0.0]], [[0.0], [1.0]]])  # errors 0 and (1 + 1) = 2
    code = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    pred_fake = torch.tensor([[[0.0, 0.0], [1.0, 3.0]], [[1.0, 1.0], [0.0, 0.0]]])  # 2 locations
    # fake errors: image 0 locations (0, 0), (0, 2) -> 0 and 4, mean 2; image 1 -> 0; batch mean 1
    assert torch.allclose(code_error(pred_fake, code), torch.tensor([2.0, 0.0]))
    loss, logs = head.d_loss(pred_real, factors, pred_fake, code)
    assert logs["factor_real_d"].item() == pytest.approx(1.0)  # (0 + 2) / 2
    assert logs["factor_fake_d"].item() == pytest.approx(1.0)
    assert loss.item() == pytest.approx(2.0 * 1.0 + 3.0 * 1.0)
    g_loss, g_logs = head.g_loss(pred_fake, code)
    assert g_loss.item() == pytest.approx(5.0) and g_logs["factor_g"].item() == pytest.approx(1.0)


def test_ss_info_reads_only_labelled_real_images():
    named = NamedUnits(ORIENTATION, latent_dim=4, labelled_fraction=0.5, labelled_seed=0)
    named.bind_data(DSpritesDataModule())
    head = SemiSupervisedInfo(named=named)
    factors = factors_of(64)
    mask = named.labelled(factors)
    assert 0 < mask.sum() < 64
    target = named.targets(factors)
    pred = target.clone()[:, :, None]
    pred[~mask] += 10.0  # unlabelled images' readings are wrong, and must not count
    _, logs = head.d_loss(pred, factors, pred, target)
    assert logs["factor_real_d"].item() == pytest.approx(0.0, abs=1e-6)
    none = NamedUnits(ORIENTATION, latent_dim=4, labelled_fraction=1e-7, labelled_seed=0)
    none.bind_data(DSpritesDataModule())
    unlabelled = factors[~none.labelled(factors)]  # a batch without a labelled image adds 0
    loss, _ = SemiSupervisedInfo(named=none).d_loss(pred[: len(unlabelled)] * 0 + 5, unlabelled,
                                                    torch.zeros(len(unlabelled), 2, 1),
                                                    torch.zeros(len(unlabelled), 2))
    assert loss.item() == 0.0


def test_generator_input_carries_uniform_angles_and_commands():
    model = named_gan()
    assert isinstance(model, NamedGeneration) and model.named_factor_kinds == ORIENTATION
    z = model.z(4000)
    assert torch.allclose(z[:, :2].norm(dim=1), torch.ones(4000), atol=1e-5)  # on the unit circle
    angle = torch.atan2(z[:, 1], z[:, 0])
    assert abs(angle.mean().item()) < 0.1 and angle.std().item() == pytest.approx(math.pi / math.sqrt(3), rel=0.05)
    code = torch.tensor([[0.0, 1.0]] * 3)
    assert torch.equal(model.named.command(z[:3], {"orientation": code})[:, :2], code)
    assert model.generate_named({"orientation": code}).shape == (3, 1, 64, 64)
    assert model.discriminator.outputs == 1 + 2  # the game's realness, the head's two units
    assert not isinstance(DCGAN(image_shape=(1, 28, 28)), NamedGeneration)


# -- the commanded-angle measurement -------------------------------------------------------------------
def renderer(follow: bool, seed: int = 0):
    """A "model" drawing dSprites with its own renderer: with `follow`, at the orientation level
    nearest the commanded phase (one period of the drawn shape per turn), else at a random one."""
    g = torch.Generator().manual_seed(seed)

    def generate_named(values):
        code = values["orientation"]
        f = factors_of(len(code), seed=int(torch.randint(2**31, (1,), generator=g)))
        if follow:
            phase = torch.remainder(torch.atan2(code[:, 1], code[:, 0]), 2 * math.pi)
            theta = phase / (2 * math.pi) * torch.tensor(SYMMETRY)[f[:, 0]]
            f[:, 2] = torch.round(theta / (2 * math.pi / 39)).long() % 39
        return DSpritesDataModule.render(f).float() / 255

    return generate_named


def test_commanded_error_is_near_zero_for_a_model_that_obeys_and_a_guess_for_one_that_does_not():
    reader = orientation.load_regressor()
    obeys = commanded_error_deg(renderer(True), "orientation", reader, 1000, seed=1)
    ignores = commanded_error_deg(renderer(False), "orientation", reader, 1000, seed=1)
    # the reader's own error on real test images is 9.4 degrees (its floor); the renderer's 39
    # angles put the commanded angle up to 4.6 degrees further away (measured: 10.0 in all)
    assert obeys < 15.0
    assert abs(ignores - orientation.GUESS_DEG) < 6.0, ignores
    assert orientation.GUESS_DEG == pytest.approx(52.5)


# -- configuration -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("kw", "key"), [
    ({"labelled_fraction": 0}, "model.labelled_fraction"),
    ({"labelled_seed": -1}, "model.labelled_seed"),
    ({"named_factors": {"orientation": "spiral"}}, "model.named_factors.orientation"),
    ({"latent_dim": 1}, "model.latent_dim"),
    ({"factor_head": "acgan"}, "model.factor_head"),
    ({"factor_head": {"name": "ss_info", "aux_weight_d": -1}}, "model.factor_head.aux_weight_d"),
    ({"factor_head": {"name": "ss_info", "weight": 1}}, "model.factor_head.weight"),
])
def test_bad_options_are_refused_in_one_line(kw, key):
    with pytest.raises(ConfigError, match="allowed: ") as e:
        named_gan(**kw)
    assert str(e.value).startswith(key) and "\n" not in str(e.value)


def test_named_factors_need_data_with_them():
    from genlab.data import DigitsDataModule

    with pytest.raises(ConfigError, match="allowed: ") as e:
        named_gan().named.bind_data(DigitsDataModule())
    assert str(e.value).startswith("model.named_factors=") and "\n" not in str(e.value)


@pytest.mark.parametrize("arm", ["labelled_100", "labelled_10", "labelled_1", "beta_vae"])
@pytest.mark.parametrize("model", ["named_vae", "named_gan"])
def test_the_study_preset_composes_for_each_arm(tmp_path, model, arm):
    family = [f"model={model}", f"study/named_factor@model={model}"] if model == "named_gan" else []
    cfg = make_cfg(tmp_path, "experiment=named_factor", *family, f"arm={arm}")
    m = cfg.model
    assert cfg.data.name == "dsprites" and dict(m.named_factors) == ORIENTATION
    assert m.labelled_fraction == cfg.arms[arm].labelled_fraction
    if model == "named_gan":
        assert m.family == "dcgan" and m.factor_head.name == "ss_info"
        assert m.factor_head.aux_weight_d == cfg.arms[arm].gan_aux_weight_d
        assert "net" not in m and "objective" not in m
    else:
        assert m.net.base_channels == 16 and m.objective.supervised_weight == cfg.arms[arm].supervised_weight


def test_smoke_run_of_named_gan_on_dsprites(smoke, tmp_path):
    run = smoke(tmp_path / "run", "model=named_gan", "metrics.commanded_factors.n=100")
    assert (run / "samples" / "traversal_orientation_final.png").is_file()
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    logged = {k for r in rows for k, v in r.items() if v not in ("", None)}
    assert {"val/orientation_err_deg", "val/orientation_commanded_err_deg", "val/fid",
            "train/factor_real_d", "train/factor_fake_d", "train/factor_g"} <= logged, logged
    err = [float(r["val/orientation_commanded_err_deg"]) for r in rows if r.get("val/orientation_commanded_err_deg")]
    assert all(0 <= e <= 180 for e in err)


def test_the_vae_generates_with_commanded_units(tmp_path):
    from genlab.models import VAE

    torch.manual_seed(0)
    vae = VAE(image_shape=(1, 64, 64), latent_dim=4, named_factors=ORIENTATION, objective="named_elbo",
              net={"name": "conv", "base_channels": 8}, loglik_samples=0)
    assert isinstance(vae, NamedGeneration) and not isinstance(VAE(image_shape=(1, 28, 28)), NamedGeneration)
    x = vae.generate_named({"orientation": torch.tensor([[1.0, 0.0], [0.0, 1.0]])})
    assert x.shape == (2, 1, 64, 64) and 0 <= x.min() and x.max() <= 1
    assert Path(orientation.weights_path()).stat().st_size < 2e6
