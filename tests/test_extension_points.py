"""The extension points of docs/architecture.md, each performed once here the way a user would:
a dataset, a model family and an evaluator, each defined in this file plus the conf files a
user would add (written to a folder on Hydra's search path), then a real smoke run through
genlab-train's `train(cfg)`. (A discriminator mode: tests/test_gan.py,
test_a_new_d_mode_is_one_class.)"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from conftest import make_cfg
from torch import Tensor, nn

from genlab.callbacks.evaluators import EVALUATORS, EvalContext, Evaluator
from genlab.data import DATASETS, Dataset, InMemoryDataModule, build_datamodule
from genlab.data.digits import load_digits_tensors
from genlab.models import FAMILIES, family_name, load_model, read_genlab_checkpoint
from genlab.models.common import GenerativeModule, eval_means, log_eval
from genlab.runs import RunReadError, read_summary


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


# --- add a dataset: its module, one DATASETS entry, conf/data/<name>.yaml (+ conf/metrics/<name>.yaml)


class InvertedDigits(InMemoryDataModule):
    """scikit-learn's digits, white background and dark strokes: 8x8 like digits, so digits'
    FID extractor fits it (a dataset of another shape would train its own, see the document)."""

    name = "inverted_digits"
    image_shape = (1, 8, 8)

    def load(self):
        return {split: (255 - x, y) for split, (x, y) in load_digits_tensors().items()}


def test_add_a_dataset(tmp_path, monkeypatch):
    monkeypatch.setitem(DATASETS, "inverted_digits", Dataset(InvertedDigits, "genlab-digits-cnn"))
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
    monkeypatch.delitem(DATASETS, "inverted_digits")
    with pytest.raises(RunReadError, match="unknown dataset 'inverted_digits'"):
        read_genlab_checkpoint(summary["best_checkpoint"])


# --- add a model family: the LightningModule, one FAMILIES entry, conf/model + conf/objective -----


class PixelGaussian(GenerativeModule):
    """Every pixel an independent Gaussian with a learned mean and standard deviation: the
    smallest model that learns something. val/nll, test/nll: nats per image."""

    def __init__(self, image_shape: list[int], lr: float = 0.05):
        super().__init__()
        self.save_hyperparameters()
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


def test_add_a_model_family(tmp_path, monkeypatch):
    monkeypatch.setitem(FAMILIES, "pixel_gaussian", PixelGaussian)
    search = user_conf(tmp_path / "conf", {
        "model/pixel_gaussian.yaml": f"_target_: {__name__}.PixelGaussian\nlr: 0.05\n",
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
    monkeypatch.delitem(FAMILIES, "pixel_gaussian")
    with pytest.raises(RunReadError, match="unknown model family 'pixel_gaussian'"):
        read_genlab_checkpoint(summary["best_checkpoint"])


# --- add an evaluator: one Evaluator subclass, its node metrics.<name> ----------------------------


@EVALUATORS.register("brightness_gap")  # its config node, metrics.brightness_gap
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


def test_add_an_evaluator(tmp_path):
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
