"""model=named_vae: latent units tied to dSprites' named factors (genlab.models.named)."""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
from PIL import Image

from genlab import sample
from genlab.capabilities import KnownFactors, NamedFactors
from genlab.config import ConfigError
from genlab.data import DigitsDataModule, DSpritesDataModule
from genlab.data.dsprites import FACTOR_SIZES, factors_to_index, index_to_factors
from genlab.models import VAE, load_model
from genlab.models.named import grid_index, labelled_mask, sweep, sweeps

ORIENTATION = {"orientation": "circle"}


def named_vae(**kw) -> VAE:
    """model=named_vae's composition: named units and the named_elbo objective."""
    torch.manual_seed(0)
    kw.setdefault("named_factors", ORIENTATION)
    objective = {"name": "named_elbo", **{k: kw.pop(k) for k in ("beta", "supervised_weight") if k in kw}}
    return VAE(image_shape=(1, 64, 64), latent_dim=kw.pop("latent_dim", 6), objective=objective,
               net={"name": "conv", "base_channels": kw.pop("base_channels", 8)}, loglik_samples=0, **kw)


class CentredSprites(DSpritesDataModule):
    """A corner of procedural dSprites: the largest scale, a 4 x 4 block of central positions,
    every shape and orientation (1,920 images), so 150 steps of a tiny network learn something."""

    def load(self):
        levels = torch.cartesian_prod(torch.arange(3), torch.tensor([5]), torch.arange(40),
                                      torch.arange(14, 18), torch.arange(14, 18))
        idx = factors_to_index(levels)
        idx = idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(0))]
        return {"train": (idx[self.test_size:], None), "test": (idx[: self.test_size], None)}


def test_dsprites_declares_named_factors_with_their_symmetry():
    dm = DSpritesDataModule()
    assert isinstance(dm, NamedFactors) and isinstance(dm, KnownFactors)
    assert not isinstance(DigitsDataModule(), NamedFactors)
    # level 7 of each shape: theta = 7 * 2 pi / 39; the period is the shape's symmetry
    f = torch.tensor([[s, 0, 7, 0, 0] for s in range(3)])
    theta, period = dm.rotation(f, "orientation")
    assert torch.allclose(theta, torch.full((3,), 7 * 2 * math.pi / 39))
    assert torch.allclose(period, torch.tensor([math.pi / 2, math.pi, 2 * math.pi]))
    # the last level draws the first one's image, and so gets the same angle
    f_last = torch.tensor([[2, 0, 39, 5, 5], [2, 0, 0, 5, 5]])
    assert torch.equal(dm.render(f_last)[0], dm.render(f_last)[1])
    assert dm.rotation(f_last, "orientation")[0].unique().tolist() == [0.0]
    assert grid_index(f, FACTOR_SIZES).tolist() == factors_to_index(f).tolist()


def test_circle_targets_follow_the_symmetry_and_the_error_is_in_image_degrees():
    dm = DSpritesDataModule()
    model = named_vae()
    model.named.bind_data(dm)
    f = torch.tensor([[s, 2, o, 3, 4] for s in range(3) for o in (0, 5, 13, 20, 38)])
    t = model.named.targets(f)
    theta, period = dm.rotation(f, "orientation")
    k = 2 * math.pi / period  # 4 for squares, 2 for ellipses, 1 for hearts
    assert torch.allclose(t, torch.stack([torch.cos(k * theta), torch.sin(k * theta)], 1), atol=1e-5)
    mu = torch.zeros(len(f), 6)
    mu[:, :2] = t
    err = model.named.errors(mu, f)["orientation_err_deg"]
    assert err.abs().max() < 1e-3
    mu[:, :2] = -t  # half a turn of the circle off: half a symmetry period of the image
    err = model.named.errors(mu, f)["orientation_err_deg"]
    assert torch.allclose(err, torch.rad2deg(period / 2), atol=1e-3)


def test_line_factor_targets_are_standardised_levels():
    dm = DSpritesDataModule()
    model = named_vae(named_factors={"scale": "line", "orientation": "circle"})
    model.named.bind_data(dm)
    assert {k: (c.registry_name, u) for k, (c, u) in model.named.units.items()} == {"scale": ("line", 0), "orientation": ("circle", 1)}
    f = index_to_factors(torch.arange(0, 737_280, 97))
    scale = model.named.targets(f)[:, 0]
    assert abs(scale.mean()) < 0.05 and abs(scale.var() - 1) < 0.05  # over a near-uniform grid
    mu = torch.zeros(len(f), 6)
    mu[:, 0] = scale
    assert model.named.errors(mu, f)["scale_mae"].max() < 1e-4


@pytest.mark.parametrize("fraction", [1.0, 0.1, 0.01])
def test_labelled_fraction_selects_that_many_images_by_grid_index(fraction):
    mask = labelled_mask(737_280, fraction, seed=0)
    assert int(mask.sum()) == round(fraction * 737_280)
    assert torch.equal(mask, labelled_mask(737_280, fraction, seed=0))
    if fraction < 1:
        assert not torch.equal(mask, labelled_mask(737_280, fraction, seed=1))
    dm = DSpritesDataModule()
    dm.setup()
    model = named_vae(labelled_fraction=fraction)
    model.named.bind_data(dm)
    train = index_to_factors(dm.splits["train"][0])
    n, count = len(train), int(model.named.labelled(train).sum())
    # the training split is a random 97% of the grid: a hypergeometric count around fraction * n
    sd = math.sqrt(n * fraction * (1 - fraction) * (1 - n / 737_280))
    assert abs(count - fraction * n) <= 5 * sd + 1
    # the subset is fixed by labelled_seed, not by the run's seed
    torch.manual_seed(123)
    again = named_vae(labelled_fraction=fraction)
    again.named.bind_data(dm)
    assert torch.equal(again.named.labelled(train[:5000]), model.named.labelled(train[:5000]))


def test_supervised_term_averages_over_the_labelled_images_only():
    dm = DSpritesDataModule()
    model = named_vae(labelled_fraction=0.1)
    model.named.bind_data(dm)
    f = index_to_factors(torch.arange(0, 737_280, 1234))
    mask = model.named.labelled(f)
    assert 0 < mask.sum() < len(f)
    mu, std = torch.randn(len(f), 6), torch.rand(len(f), 6) + 0.1
    t = model.named.targets(f[mask])
    by_hand = -torch.distributions.Normal(mu[mask, :2], std[mask, :2]).log_prob(t).sum(1).mean()
    assert model.named.supervised_term(mu, std, f) == pytest.approx(float(by_hand), rel=1e-5)
    none = f[~mask][:10]
    assert model.named.supervised_term(mu[:10], std[:10], none) == 0


def _fit(weight: float) -> float:
    """val/orientation_err_deg on 300 held-out images after 150 steps."""
    pl.seed_everything(0, verbose=False)
    dm = CentredSprites(batch_size=32, eval_batch_size=500, val_size=300, test_size=300)
    model = named_vae(supervised_weight=weight, beta=1.0, lr=3e-3)
    trainer = pl.Trainer(max_steps=150, max_epochs=-1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, check_val_every_n_epoch=1000)
    trainer.fit(model, datamodule=dm)
    return trainer.validate(model, datamodule=dm, verbose=False)[0]["val/orientation_err_deg"]


def test_the_supervised_term_ties_the_named_units_to_the_orientation():
    supervised, unsupervised = _fit(100.0), _fit(0.0)
    chance = (22.5 + 45 + 90) / 3  # a uniform guess on the circle: a quarter period per shape
    assert unsupervised > 0.8 * chance  # units 0, 1 of the plain VAE say little about it
    assert supervised < 0.6 * unsupervised


@pytest.mark.parametrize(("named", "data", "key"), [
    ({"angle": "circle"}, DSpritesDataModule, "model.named_factors='angle'"),
    ({"scale": "circle"}, DSpritesDataModule, "model.named_factors.scale='circle'"),
    (ORIENTATION, DigitsDataModule, "model.named_factors="),
])
def test_names_the_data_does_not_have_are_refused(named, data, key):
    with pytest.raises(ConfigError, match="allowed: ") as e:
        named_vae(named_factors=named).named.bind_data(data())
    assert str(e.value).startswith(key) and "\n" not in str(e.value)


@pytest.mark.parametrize(("kw", "key"), [
    ({"labelled_fraction": 0}, "model.labelled_fraction"),
    ({"labelled_fraction": 1.5}, "model.labelled_fraction"),
    ({"named_factors": {}}, "model.named_factors"),
    ({"named_factors": {"orientation": "square"}}, "model.named_factors.orientation"),
    ({"supervised_weight": -1}, "model.objective.supervised_weight"),
    ({"latent_dim": 1}, "model.latent_dim"),
])
def test_bad_options_are_refused_in_one_line(kw, key):
    with pytest.raises(ConfigError, match="allowed: ") as e:
        named_vae(**kw)
    assert str(e.value).startswith(key + "=")


def test_traversal_sweeps_one_named_unit(smoke, tmp_path):
    run = smoke(tmp_path / "run", "data=dsprites", "model=named_vae", "model.net.base_channels=8",
                "callbacks.evaluation=null")
    assert (run / "samples" / "traversal_orientation_final.png").is_file()
    ckpt = run / "checkpoints" / "last.ckpt"
    model, _ = load_model(ckpt)
    units, values = sweep(model, "orientation", 4)
    assert units == slice(0, 2)  # one full turn of the circle, in 4 steps
    assert torch.allclose(values, torch.tensor([[1.0, 0], [0, 1], [-1, 0], [0, -1]]), atol=1e-6)
    for unit in ("orientation", "7"):
        out = tmp_path / f"traversal_{unit}.png"
        sample.main([f"ckpt={ckpt}", "mode=traversal", f"unit={unit}", "n=3", "steps=5", f"out={out}"])
        assert Image.open(out).size == (5 * 66 + 2, 3 * 66 + 2)  # rows of 5 steps, 64 px + padding
    out = tmp_path / "traversal_all.png"  # one row per latent unit (10), for each of 2 images
    sample.main([f"ckpt={ckpt}", "mode=traversal", "unit=all", "n=2", "steps=5", f"out={out}"])
    assert Image.open(out).size == (5 * 66 + 2, 2 * 10 * 66 + 2)
    assert [u for u, _ in sweeps(model, "all", 5)] == [slice(i, i + 1) for i in range(10)]
    with pytest.raises(ConfigError, match=r"unit='scale' is invalid; allowed: orientation \| a latent index 0..9 \| all"):
        sweep(model, "scale", 4)
