"""The evaluation callback (genlab.callbacks.evaluation.Evaluation) and its evaluators inside real
smoke runs: what they log, that the numbers mean something, switching evaluators off, early
failures, and DDP agreement."""

from __future__ import annotations

import csv
import math
import re

import pytest
import torch
from conftest import make_cfg, run_cli
from omegaconf import OmegaConf

from genlab import runs
from genlab.callbacks.evaluation import Evaluation
from genlab.config import ConfigError
from genlab.data import DATASETS, build_datamodule
from genlab.metrics import extractors
from genlab.metrics.extractors import ExtractorUnavailable
from genlab.metrics.fid import RealReference, sample_metrics, to_uint8
from genlab.models.vae import VAE
from genlab.seeding import mix_seed

QUALITY = ("val/fid", "val/kid", "val/precision", "val/recall")
LATENT = ("val/fid_expost", "val/fid_recon", "val/active_units", "val/mmd_prior", "val/kl_aggregate")


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """One smoke VAE run on digits (2 epochs, 200 evaluation samples), shared by the tests below."""
    from genlab.train import train

    run = tmp_path_factory.mktemp("digits_run")
    cfg = make_cfg(run, "debug=smoke", "logger=csv", "data=digits")
    train(cfg)
    return run, cfg


def _data_module(cfg):
    """The run's own data module, rebuilt from its config."""
    dm = build_datamodule(cfg.data)
    dm.setup()
    return dm


def test_metrics_reach_the_summary_and_metrics_csv(digits_run):
    digits_run, _ = digits_run
    s = runs.read_summary(digits_run)
    assert s["status"] == "ok"
    for key in QUALITY + LATENT:
        assert math.isfinite(s[key]), key
    assert 0 <= s["val/precision"] <= 1 and 0 <= s["val/recall"] <= 1
    assert 0 <= s["val/active_units"] <= 16
    assert "val/is" not in s  # not in metrics.sample_quality.which for digits

    with open(digits_run / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val/fid")]
    # every_n_epochs=1 under debug=smoke: one row per epoch, plus the final validation
    assert len(rows) == 2 + 1
    assert all(r.get("val/fid_expost") for r in rows)
    assert float(rows[-1]["val/fid"]) == pytest.approx(s["val/fid"], rel=1e-6)


def test_an_evaluator_switched_off_leaves_the_others_as_they_were(digits_run, smoke, tmp_path):
    """metrics.sample_quality=null: no sample-quality metric at all, and the latent diagnostics
    (which generate their own images) are exactly those of the run with every evaluator on."""
    on, _ = digits_run
    off = smoke(tmp_path / "off", "data=digits", "metrics.sample_quality=null")
    s, ref = runs.read_summary(off), runs.read_summary(on)
    assert s["status"] == "ok" and not any(k in s for k in QUALITY)
    for key in LATENT + ("val/elbo", "test/elbo"):
        assert s[key] == ref[key], key
    assert s["fid_extractor"] == ref["fid_extractor"]


def test_each_evaluator_is_switched_by_its_own_node():
    ev = Evaluation.from_config({"sample_quality": {"which": ["fid"]}, "latent": None,
                                 "disentanglement": False, "save_samples": True})
    assert [e.registry_name for e in ev.evaluators] == ["sample_quality", "save_samples"]
    assert ev.evaluators[0].metrics == ("val/fid",)
    # a class kept outside genlab is named by its node's _target_
    (latent,) = Evaluation.from_config({"latent": {
        "_target_": "genlab.callbacks.evaluators.LatentDiagnostics", "subset": 5}}).evaluators
    assert latent.subset == 5


@pytest.mark.parametrize("node, message", [
    ({"nope": {}}, "metrics.nope is neither a setting nor an evaluator; allowed: every_n_epochs"),
    ({"latent": {"nope": 1}}, "metrics.latent.nope is not an option of evaluator latent; allowed: "
                              "subset, expost_components, expost_reg_covar, kl_max_gap, expost_codes"),
    ({"latent": {"expost_codes": "train"}},
     "metrics.latent.expost_codes='train' is invalid; allowed: n_samples | all"),
    ({"latent": 3}, "metrics.latent=3 is invalid; allowed: a mapping of its settings"),
    ({"latent": {"subset": 0}}, "metrics.latent.subset=0 is invalid"),
    ({"latent": {"kl_max_gap": 0}}, "metrics.latent.kl_max_gap=0 is invalid; allowed: a number > 0"),
    ({"sample_quality": {"which": ["lpips"]}}, "metrics.sample_quality.which='lpips' is invalid"),
    ({"every_n_epochs": -1}, "metrics.every_n_epochs=-1 is invalid"),
    ({"latent": {"_target_": "genlab.callbacks.evaluators.SampleQuality"}},
     "metrics.latent._target_='genlab.callbacks.evaluators.SampleQuality' is invalid; allowed: an "
     "Evaluator subclass whose name is 'latent'"),
])
def test_a_bad_metrics_node_names_its_key(node, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        Evaluation.from_config(node)


def test_extractor_is_named_in_the_summary(digits_run):
    digits_run, cfg = digits_run
    # metrics.extractor=null: the data's own, from genlab.data.DATASETS
    assert cfg.metrics.extractor is None
    assert runs.read_summary(digits_run)["fid_extractor"] == DATASETS["digits"].fid_extractor


def test_model_fid_is_far_above_the_real_data_floor(digits_run):
    """Held-out real images against the same reference give the FID floor for this N; a model
    trained for 8 steps must be far above it."""
    digits_run, cfg = digits_run
    dm = _data_module(cfg)
    n = cfg.metrics.n_samples
    ref = RealReference.from_datamodule(dm, cfg.metrics.real_split, n)
    held_out = dm.images("test", n)
    floor = sample_metrics(held_out, ref, DATASETS["digits"].fid_extractor, ["fid"],
                           cache_dir=cfg.metrics.cache_dir)["fid"]
    model_fid = runs.read_summary(digits_run)["val/fid"]
    assert 0 < floor < model_fid / 10, (floor, model_fid)


def test_fid_recon_is_the_fid_of_the_reconstructions(digits_run):
    """val/fid_recon is the FID of the best checkpoint's reconstructions (decoder means at the
    posterior means) of the first n_samples training images against val/fid's reference, with the
    run's extractor; reconstructions are closer to the data than the prior's samples."""
    digits_run, cfg = digits_run
    s = runs.read_summary(digits_run)
    dm = _data_module(cfg)
    n = cfg.metrics.n_samples
    model = VAE.load_from_checkpoint(s["best_checkpoint"], map_location="cpu").eval()
    recon = to_uint8(model.reconstruct(dm.images("train", n)))
    ref = RealReference.from_datamodule(dm, cfg.metrics.real_split, n)
    fid = sample_metrics(recon.float() / 255, ref, s["fid_extractor"], ["fid"])["fid"]
    assert math.isfinite(s["val/fid_recon"])
    assert s["val/fid_recon"] == pytest.approx(fid, rel=1e-5)


def test_fid_recon_is_the_floor_of_a_trained_vae(smoke, tmp_path):
    """Once the VAE has learnt something (320 steps on digits), its reconstructions are closer to
    the data than its prior samples and its ex-post mixture's samples: val/fid_recon is their floor.
    (After the 8 steps of debug=smoke the decoder is still near its initialisation, and no order
    holds.)"""
    run = smoke(tmp_path / "run", "data=digits", "trainer.max_epochs=40",
                "trainer.limit_train_batches=null", "metrics.every_n_epochs=0")
    s = runs.read_summary(run)
    assert s["status"] == "ok" and math.isfinite(s["val/fid_recon"])
    assert s["val/fid_recon"] < s["val/fid"], (s["val/fid_recon"], s["val/fid"])
    assert s["val/fid_recon"] < s["val/fid_expost"], (s["val/fid_recon"], s["val/fid_expost"])


def test_expost_codes_all_fits_every_training_image(smoke, tmp_path, monkeypatch):
    """metrics.latent.expost_codes=all: the ex-post mixture is fitted on the codes of every
    training image (the posterior means, in the split's order), not of the first n_samples."""
    from genlab.callbacks import evaluators

    fitted = []
    fit = evaluators.ExPostGMM.fit

    def spy(self, z):
        fitted.append(z.clone())
        return fit(self, z)

    monkeypatch.setattr(evaluators.ExPostGMM, "fit", spy)
    overrides = ("data=digits", "metrics.latent.expost_codes=all", "trainer.max_epochs=1",
                 "metrics.sample_quality=null")
    run = smoke(tmp_path / "run", *overrides)
    s = runs.read_summary(run)
    assert s["status"] == "ok" and math.isfinite(s["val/fid_expost"])
    cfg = make_cfg(run, "debug=smoke", *overrides)  # the run's config, as smoke composed it
    dm = _data_module(cfg)
    total = len(dm.images("train"))
    assert cfg.metrics.n_samples < total
    assert fitted and all(len(z) == total for z in fitted)
    # the final validation's codes are the best checkpoint's posterior means of every image
    model = VAE.load_from_checkpoint(s["best_checkpoint"], map_location="cpu").eval()
    with torch.no_grad():
        mu = model.posterior(dm.images("train"))[0]
    torch.testing.assert_close(fitted[-1].float(), mu, rtol=1e-4, atol=1e-5)


def _no_training(run):
    assert runs.read_summary(run)["status"] == "failed"
    assert not (run / "checkpoints").exists()
    if (run / "metrics.csv").exists():
        assert "train/loss" not in (run / "metrics.csv").read_text()


def test_missing_inception_weights_fail_before_training(smoke, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # an empty torch.hub cache
    monkeypatch.setattr(extractors, "_online", lambda *a, **k: False)
    run = tmp_path / "run"
    with pytest.raises(ExtractorUnavailable, match="needs torch-fidelity's Inception weights") as e:
        smoke(run, "data=digits", "metrics.extractor=inception-v3-compat")
    assert "metrics.inception_weights" in str(e.value)
    _no_training(run)


def test_extractor_for_other_images_fails_before_training(smoke, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(ConfigError, match="metrics.extractor='genlab-fmnist-cnn' is invalid"):
        smoke(run, "data=digits", "metrics.extractor=genlab-fmnist-cnn")
    _no_training(run)


# slow (53 s): tests/test_fid.py checks the gathered samples' metrics in CI, test_ddp_parity the DDP run
@pytest.mark.slow
def test_ddp_fid_equals_a_single_process_recomputation(tmp_path):
    """Two gloo processes each generate half of the samples; the val/fid they log at the final
    validation equals sample_metrics on the gathered samples in this one process."""
    # one epoch (an evaluation inside fit, then the final one); few KID subsets: KID is not checked
    run_cli("debug=smoke", "data=digits", "trainer=ddp_cpu", "logger=csv", "trainer.max_epochs=1",
            "metrics.save_samples=true", "metrics.sample_quality.kid_subsets=10", f"paths.log_dir={tmp_path}",
            cwd=tmp_path)
    (run,) = runs.find_runs(tmp_path)
    s = runs.read_summary(run)
    assert s["status"] == "ok"
    saved = torch.load(run / "eval_samples.pt", weights_only=False)
    cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
    dm = _data_module(cfg)
    fake = saved["samples"]
    assert fake.dtype == torch.uint8 and len(fake) == cfg.metrics.n_samples
    # the second half came from rank 1: the best checkpoint with rank 1's seed draws it again
    # (up to one grey level, for float rounding at a .5 boundary)
    half = len(fake) // 2
    model = VAE.load_from_checkpoint(s["best_checkpoint"], map_location="cpu").eval()
    torch.manual_seed(mix_seed(cfg.seed, "generate", 1))
    again = to_uint8(model.generate(half))
    assert (again.int() - fake[half:].int()).abs().max() <= 1
    assert not torch.equal(fake[:half], fake[half:])
    ref = RealReference.from_datamodule(dm, cfg.metrics.real_split, cfg.metrics.n_samples)
    # no cache: the reference statistics are recomputed here, independently of the run
    fid = sample_metrics(fake.float() / 255, ref, saved["extractor"], ["fid"])["fid"]
    assert s["val/fid"] == pytest.approx(fid, rel=1e-6)
    assert math.isfinite(s["val/fid_expost"]) and math.isfinite(s["val/active_units"])
    assert saved["metrics"]["val/fid"] == pytest.approx(fid, rel=1e-6)


def test_fid_as_checkpoint_monitor_needs_it_at_every_save(smoke, tmp_path):
    """Lightning would stop after the first epoch without val/fid; genlab says why before it."""
    run = tmp_path / "run"
    with pytest.raises(ConfigError, match="metrics.every_n_epochs=2 is invalid.*monitors val/fid"):
        smoke(run, "data=digits", "objective.metric=val/fid", "objective.mode=min",
              "metrics.every_n_epochs=2")
    _no_training(run)
