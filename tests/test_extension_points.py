"""The extension points of docs/architecture.md, each performed once here the way a user would:
a dataset, a model family, an evaluator, a prior, an objective and a network, each defined in
this file, registered, plus the conf files a user would add (written to a folder on Hydra's
search path), then a real smoke run through genlab-train's `train(cfg)`. (A discriminator game
with a setting of its own: tests/test_gan.py, test_a_new_d_mode_is_one_class.)"""

from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path

import pytest
import torch
from conftest import make_cfg
from torch import Tensor, nn

from genlab.callbacks.evaluators import EVALUATORS, EvalContext, Evaluator
from genlab.data import DATASETS, InMemoryDataModule, build_datamodule
from genlab.data.digits import load_digits_tensors
from genlab.models import FAMILIES, family_name, load_model, read_genlab_checkpoint
from genlab.models.common import GenerativeModule, eval_means, log_eval
from genlab.models.objectives import VAE_OBJECTIVES, VAEObjective
from genlab.models.priors import PRIORS, Prior
from genlab.nets import NETS, Net
from genlab.runs import RunReadError, read_summary
from genlab.settings import Settings, positive


def user_conf(root: Path, files: dict[str, str]) -> str:
    """The user's own conf files (group/name.yaml -> text) in a folder Hydra also searches: the
    same files would go into conf/ of a checkout."""
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return f"hydra.searchpath=[file://{root}]"


def train_run(run_dir: Path, *overrides: str) -> dict:
    from genlab.train import train

    train(make_cfg(run_dir, "debug=smoke", "logger=csv", *overrides))
    summary = read_summary(run_dir)
    assert summary["status"] == "ok", summary
    return summary


def val_curve(run_dir: Path, key: str) -> tuple[list[float], float]:
    """A val/* metric in metrics.csv: its value at each of fit's validations, and at the final
    validation of the best checkpoint (the last row)."""
    with open(run_dir / "metrics.csv") as f:
        values = [float(row[key]) for row in csv.DictReader(f) if row.get(key)]
    return values[:-1], values[-1]


@pytest.fixture
def registered(request):
    """Register an extension for one test: registered(REGISTRY, name, entry); removed afterwards."""
    added = []

    def register(registry, name, entry):
        registry.register(name)(entry)
        added.append((registry, name))
        return entry

    yield register
    for registry, name in added:
        registry.remove(name)


# --- add a dataset: its module registered in DATASETS, conf/data/<name>.yaml (+ conf/metrics/<name>.yaml)


class InvertedDigits(InMemoryDataModule):
    """scikit-learn's digits, white background and dark strokes: 8x8 like digits, so digits'
    FID extractor fits it (a dataset of another shape would train its own, see the document)."""

    image_shape = (1, 8, 8)
    fid_extractor = "genlab-digits-cnn"

    def load(self):
        return {split: (255 - x, y) for split, (x, y) in load_digits_tensors().items()}


def test_add_a_dataset(tmp_path, registered):
    registered(DATASETS, "inverted_digits", InvertedDigits)
    search = user_conf(tmp_path / "conf", {
        "data/inverted_digits.yaml": "defaults:\n  - digits\n  - _self_\nname: inverted_digits\n",
        "metrics/inverted_digits.yaml": "defaults:\n  - digits\n  - _self_\n",
    })
    run = tmp_path / "run"
    summary = train_run(run, search, "data=inverted_digits", "model.latent_dim=4")
    assert math.isfinite(summary["test/elbo"]) and math.isfinite(summary["val/fid"])
    assert summary["fid_extractor"] == "genlab-digits-cnn"
    # genlab-sample's way back to the data: by the registry name the checkpoint records
    ckpt = read_genlab_checkpoint(summary["best_checkpoint"])
    assert ckpt.data == "inverted_digits"
    dm = build_datamodule({"name": ckpt.data, **ckpt.data_kwargs})
    dm.setup()
    assert isinstance(dm, InvertedDigits) and dm.splits["train"][0].float().mean() > 127
    # a checkpoint names its dataset; without the registry entry it cannot be read back
    DATASETS.remove("inverted_digits")
    with pytest.raises(RunReadError, match="unknown dataset 'inverted_digits'"):
        read_genlab_checkpoint(summary["best_checkpoint"])
    DATASETS.register("inverted_digits")(InvertedDigits)  # the fixture removes it again


# --- add a model family: a GenerativeModule registered in FAMILIES, conf/model + conf/objective ----


@dataclasses.dataclass
class PixelGaussianSettings(Settings):
    lr: float = positive(0.05)


class PixelGaussian(GenerativeModule):
    """Every pixel an independent Gaussian with a learned mean and standard deviation: the
    smallest model that learns something. val/nll, test/nll: nats per image."""

    Settings = PixelGaussianSettings

    def __init__(self, image_shape: list[int], **settings):
        super().__init__()
        self.save_settings(self.configure(image_shape, settings))
        self.mean = nn.Parameter(torch.full(tuple(image_shape), 0.5))
        self.log_std = nn.Parameter(torch.zeros(tuple(image_shape)))
        self.means = eval_means(["nll"])

    def nll(self, x: Tensor) -> Tensor:
        z = (x - self.mean) / self.log_std.exp()
        per_pixel = 0.5 * z**2 + self.log_std + 0.5 * math.log(2 * math.pi)
        return per_pixel.flatten(1).sum(1)

    def generate(self, n: int) -> Tensor:
        noise = torch.randn(n, *self.mean.shape, device=self.device)
        return (self.mean + self.log_std.exp() * noise).clamp(0, 1)

    def training_step(self, batch, batch_idx):
        return self.nll(batch[0]).mean()

    def validation_step(self, batch, batch_idx):
        log_eval(self, "val", {"nll": self.nll(batch[0])})

    def test_step(self, batch, batch_idx):
        log_eval(self, "test", {"nll": self.nll(batch[0])})

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def test_add_a_model_family(tmp_path, registered):
    registered(FAMILIES, "pixel_gaussian", PixelGaussian)
    search = user_conf(tmp_path / "conf", {
        "model/pixel_gaussian.yaml": "family: pixel_gaussian\nlr: 0.05\n",
        "objective/pixel_gaussian.yaml": "metric: val/nll\nmode: min\n",
    })
    run = tmp_path / "run"
    # the sample-quality evaluation stays on: it needs nothing from a family but generate(n)
    summary = train_run(run, search, "data=digits", "model=pixel_gaussian")
    assert summary["objective"] == "val/nll"
    assert math.isfinite(summary["val/fid"]) and math.isfinite(summary["test/nll"])
    fit, final = val_curve(run, "val/nll")
    assert len(fit) == 2 and fit[1] < fit[0], fit  # it learns
    assert math.isclose(final, min(fit), rel_tol=1e-5) and final == pytest.approx(summary["val/nll"])
    assert family_name(PixelGaussian) == "pixel_gaussian"
    # genlab-sample's way back: the family by its registry name, weights from the checkpoint
    model, ckpt = load_model(summary["best_checkpoint"])
    assert isinstance(model, PixelGaussian) and ckpt.data == "digits"
    assert not torch.equal(model.mean.detach(), torch.full((1, 8, 8), 0.5))
    FAMILIES.remove("pixel_gaussian")
    with pytest.raises(RunReadError, match="unknown model family 'pixel_gaussian'"):
        read_genlab_checkpoint(summary["best_checkpoint"])
    FAMILIES.register("pixel_gaussian")(PixelGaussian)  # the fixture removes it again


# --- add an evaluator: one Evaluator subclass, its node metrics.<name> ----------------------------


class BrightnessGap(Evaluator):
    """|mean brightness of n generated images - that of the first n validation images|, in [0, 1]."""

    metrics = ("val/brightness_gap",)

    def __init__(self, n: int = 256):
        self.n = n

    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        # uint8 images, each rank's share seeded from the run seed, gathered across ranks
        fake = ctx.generate(self.n).float() / 255
        real = ctx.data.images("val", self.n)
        return {"val/brightness_gap": abs(fake.mean() - real.mean()).item()}


def test_add_an_evaluator(tmp_path, registered):
    registered(EVALUATORS, "brightness_gap", BrightnessGap)  # its config node: metrics.brightness_gap
    run = tmp_path / "run"
    # the new metric is the objective (the best checkpoint is chosen by it); the built-in
    # evaluators are switched off, each by its own node
    summary = train_run(run, "data=digits", "model.latent_dim=4", "+metrics.brightness_gap={n: 128}",
                        "metrics.sample_quality=null", "metrics.latent=null",
                        "objective.metric=val/brightness_gap", "objective.mode=min")
    fit, final = val_curve(run, "val/brightness_gap")
    assert len(fit) == 2 and all(0 <= v <= 1 for v in fit), fit
    # the final validation of the best checkpoint draws the same images as fit's evaluation did
    assert math.isclose(final, min(fit), rel_tol=1e-5)
    assert summary["val/brightness_gap"] == pytest.approx(final)
    assert Path(summary["best_checkpoint"]).name.startswith("best-epoch")
    assert "val/fid" not in summary and "val/active_units" not in summary
    assert summary["metric_errors"] == {}


# --- add a component: one registered class (+ its conf/model/<slot>/<name>.yaml for its settings) --


@dataclasses.dataclass
class WideNormalSettings(Settings):
    scale: float = positive(2.0)


class WideNormal(Prior):
    """N(0, scale^2 I): no closed-form KL is given, so the VAE takes the Monte-Carlo one."""

    Settings = WideNormalSettings

    def log_prob(self, z):
        s = self.settings.scale
        return (-0.5 * (z / s) ** 2 - math.log(s) - 0.5 * math.log(2 * math.pi)).sum(-1)

    def sample(self, n, device=None, generator=None, dtype=torch.float32):
        z = torch.randn(n, self.latent_dim, generator=generator, dtype=dtype)
        return self.settings.scale * z.to(device)


@dataclasses.dataclass
class KLFloorSettings(Settings):
    floor: float = positive(0.5)  # nats per image below which the KL is not penalised


class KLFloor(VAEObjective):
    """-(recon - max(KL, floor)): the ELBO with a floor on the KL term (free bits, summed)."""

    Settings = KLFloorSettings

    def loss(self, vae, batch):
        t = vae.elbo_terms(batch[0])
        return -(t["recon"] - t["kl"].clamp(min=self.settings.floor)).mean(), {"elbo": t["elbo"].mean()}


class OneLayer(Net):
    """An encoder and a decoder of one linear layer each."""

    def encoder(self, image_shape, out_dim):
        return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(image_shape), out_dim))

    def decoder(self, in_dim, image_shape):
        return nn.Sequential(nn.Linear(in_dim, math.prod(image_shape)), nn.Unflatten(1, tuple(image_shape)))


@pytest.mark.parametrize(("registry", "name", "component", "overrides", "check"), [
    (PRIORS, "wide_normal", WideNormal, ["model/prior=wide_normal", "model.prior.scale=3"],
     lambda m: isinstance(m.prior, WideNormal) and m.prior.settings.scale == 3),
    (VAE_OBJECTIVES, "kl_floor", KLFloor, ["model/objective=kl_floor"],
     lambda m: isinstance(m.objective, KLFloor) and m.objective.settings.floor == 0.5),
    (NETS, "one_layer", OneLayer, ["model.net=one_layer"],
     lambda m: sum(isinstance(x, nn.Linear) for x in m.modules()) == 2),
])
def test_add_a_component(tmp_path, registered, registry, name, component, overrides, check):
    """A prior, an objective or a network is one registered class; a component with settings
    also gets its conf file (conf/model/<slot>/<name>.yaml) so that `model/<slot>=<name>` picks it
    and its settings are overridable; the VAE needs no edit, and its checkpoint rebuilds it."""
    registered(registry, name, component)
    slot = registry.key.split(".")[1]
    fields = "".join(f"{k}: {v}\n" for k, v in dataclasses.asdict(component.Settings()).items())
    search = user_conf(tmp_path / "conf", {f"model/{slot}/{name}.yaml": f"name: {name}\n{fields}"})
    run = tmp_path / "run"
    summary = train_run(run, search, "data=digits", "model.latent_dim=4", "metrics.sample_quality=null",
                        *overrides)
    assert math.isfinite(summary["test/elbo"]) and math.isfinite(summary["val/elbo"])
    model, _ = load_model(summary["best_checkpoint"])
    assert check(model)
