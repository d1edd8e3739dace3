"""The linear probe (metrics.linear_probe): class accuracy of a logistic regression on a model's
codes, on real digits. A trained model reads far above chance, codes that ignore the image read at
chance, a failed fit is NaN with its reason, and data without class labels is refused in one line."""

from __future__ import annotations

import csv
import math
import re
import types

import pytest
import pytorch_lightning as pl
import torch
from conftest import make_cfg
from torch import nn

from genlab import runs
from genlab.callbacks.evaluation import Evaluation
from genlab.callbacks.evaluators import EvalContext, LinearProbe
from genlab.capabilities import ClassLabels, Encoder, Representation
from genlab.config import ConfigError
from genlab.data import DigitsDataModule, DSpritesDataModule
from genlab.models.dae import DAE
from genlab.models.vae import VAE


def context(model, dm) -> EvalContext:
    """The evaluation context of one process, outside a Trainer."""
    trainer = types.SimpleNamespace(datamodule=dm, current_epoch=0, global_rank=0, world_size=1,
                                    strategy=types.SimpleNamespace(broadcast=lambda obj, src=0: obj))
    return EvalContext(trainer, model, final=True, seed=0, n_samples=100, generate_batch_size=500,
                       extractor="unused", real=None, score=None)


class FixedCodes(nn.Module, Representation):
    """Codes that do not depend on the image: seeded noise, or NaN."""

    def __init__(self, fill: float | None = None):
        super().__init__()
        self.fill, self.g = fill, torch.Generator().manual_seed(0)

    @property
    def device(self):
        return torch.device("cpu")

    def codes(self, x):
        if self.fill is not None:
            return torch.full((len(x), 16), self.fill)
        return torch.randn(len(x), 16, generator=self.g)


@pytest.fixture(scope="module")
def digits():
    dm = DigitsDataModule(val_size=150)
    dm.setup()
    return dm


def chance(dm, split: str) -> float:
    """The accuracy of always answering the most frequent class."""
    y = dm.labels(split)
    return y.bincount().max().item() / len(y)


def test_capabilities_are_declared():
    assert isinstance(VAE((1, 8, 8)), Representation) and isinstance(VAE((1, 8, 8)), Encoder)
    dae = DAE((1, 8, 8))
    assert isinstance(dae, Representation) and not isinstance(dae, Encoder)
    assert isinstance(DigitsDataModule(), ClassLabels)
    assert not isinstance(DSpritesDataModule(), ClassLabels)  # its labels are factors


@pytest.mark.parametrize("split", ["val", "test"])
def test_a_trained_model_reads_far_above_chance_and_random_codes_at_chance(digits, split):
    pl.seed_everything(0)
    vae = VAE((1, 8, 8), latent_dim=16)
    pl.Trainer(max_epochs=5, logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, limit_val_batches=0).fit(vae, digits)
    vae.eval()
    probe = LinearProbe(split=split)
    with torch.no_grad():
        trained = probe.evaluate(context(vae, digits))["val/probe_acc"]
        noise = probe.evaluate(context(FixedCodes(), digits))["val/probe_acc"]
    base = chance(digits, split)
    assert base < 0.2  # ten classes, nearly balanced
    # measured 0.947 (val) and 0.933 (test), noise 0.06 and 0.11; the standard error of an accuracy on 150 images is at most 0.04
    assert trained > 0.8, trained
    assert noise < base + 0.15, noise
    assert trained > noise + 0.5


def test_a_failed_fit_is_nan_with_its_reason(digits):
    ctx = context(FixedCodes(fill=math.nan), digits)
    probe = LinearProbe()
    out = ctx.attempt(probe.metrics, lambda: probe.evaluate(ctx))
    assert math.isnan(out["val/probe_acc"])
    assert "ValueError" in ctx.reasons["val/probe_acc"] and "NaN" in ctx.reasons["val/probe_acc"]


def test_off_by_default_and_on_by_its_node(tmp_path):
    cfg = make_cfg(tmp_path)
    assert "linear_probe" not in [e.registry_name for e in Evaluation.from_config(cfg.metrics).evaluators]
    (probe,) = Evaluation.from_config({"linear_probe": {"train_images": 300, "split": "test"}}).evaluators
    assert (probe.train_images, probe.test_images, probe.split) == (300, 5000, "test")


@pytest.mark.parametrize("node, message", [
    ({"split": "train"}, "metrics.linear_probe.split='train' is invalid; allowed: val | test"),
    ({"train_images": 0}, "metrics.linear_probe.train_images=0 is invalid; allowed: a positive integer"),
    ({"c": -1}, "metrics.linear_probe.c=-1 is invalid; allowed: a number > 0"),
])
def test_bad_settings_name_their_key(node, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        Evaluation.from_config({"linear_probe": node})


def test_a_dae_run_logs_probe_accuracy_at_every_evaluation(smoke, tmp_path):
    run = smoke(tmp_path / "run", "data=digits", "model=dae", "corruption=salt_pepper",
                "metrics.linear_probe=true", "metrics.sample_quality=null")
    summary = runs.read_summary(run)
    assert summary["status"] == "ok" and summary["metric_errors"] == {}
    with open(run / "metrics.csv") as f:
        values = [float(r["val/probe_acc"]) for r in csv.DictReader(f) if r.get("val/probe_acc")]
    assert len(values) == 2 + 1  # every epoch under debug=smoke, and the final validation
    # 256 training images (debug=smoke's data.limit), chance about 0.1
    assert all(0.5 < v <= 1 for v in values), values
    assert summary["val/probe_acc"] == pytest.approx(values[-1])


def test_data_without_class_labels_is_refused_before_training(smoke, tmp_path):
    with pytest.raises(ConfigError) as e:
        smoke(tmp_path / "run", "data=dsprites", "metrics.linear_probe=true")
    message = str(e.value)
    assert "\n" not in message
    assert message == ("metrics.linear_probe is on, but data 'dsprites' does not declare ClassLabels; "
                       "allowed: metrics.linear_probe=null, or data that declares it "
                       "(data=fashion_mnist | data=digits | data=mnist)")
    assert not (tmp_path / "run" / "checkpoints").exists()
