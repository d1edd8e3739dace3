"""Class-conditional generation: the conditional VAE (model=cvae), the conditional DCGAN with a
projection discriminator and class-conditional batch norm (model=cdcgan), the ClassConditional
capability, intra-FID and class accuracy, genlab-sample class=, and the study preset."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import CONF, make_cfg
from omegaconf import OmegaConf

from genlab.capabilities import ClassConditional
from genlab.config import ConfigError
from genlab.data import DATASETS, build_datamodule
from genlab.metrics.conditional import class_accuracy, frechet_distance, intra_fid
from genlab.models import DCGAN, VAE, build_model
from genlab.models.conditional import require_class_data
from genlab.nets.conditional import ConditionalBatchNorm, ProjectionDiscriminator

DIGITS = (1, 8, 8)


def cvae(**kw):
    return VAE(DIGITS, conditional=True, num_classes=10, **kw)


def cdcgan(**kw):
    return DCGAN(DIGITS, generator="conditional_dcgan", discriminator="projection", num_classes=10, **kw)


@pytest.fixture(scope="module")
def digits():
    dm = build_datamodule({"name": "digits", "root": "unused", "val_size": 150})
    dm.setup("fit")
    return dm


def test_only_conditional_models_declare_the_capability():
    torch.manual_seed(0)
    assert isinstance(cvae(), ClassConditional) and isinstance(cdcgan(), ClassConditional)
    assert not isinstance(VAE(DIGITS, num_classes=10), ClassConditional)
    assert not isinstance(DCGAN(DIGITS, num_classes=10), ClassConditional)


def test_cvae_shapes_and_the_label_changes_encoder_and_decoder(digits):
    torch.manual_seed(0)
    model = cvae().eval()
    x, y = digits.images("train", 6), digits.labels("train", 6)
    with model.labelled(y):
        mu, std = model.posterior(x)
        iwae = model.iwae_bound(x, 3)  # k draws per image read the same labels
    with model.labelled((y + 1) % 10):
        mu_other, _ = model.posterior(x)
    assert mu.shape == std.shape == (6, 16) and iwae.shape == (6,)
    assert not torch.allclose(mu, mu_other)
    z = torch.randn(4, 16)
    a, b = model.generate_class(torch.tensor([1, 1, 1, 1]), z), model.generate_class(torch.tensor([7] * 4), z)
    assert a.shape == (4, *DIGITS) and 0 <= a.min() and a.max() <= 1
    assert not torch.allclose(a, b)
    # generate(n) cycles through the classes: the same z with labels 0, 1, 2, 0
    g = model.generate(4, z)
    assert torch.allclose(g[1], model.generate_class(torch.tensor([1]), z[1:2])[0])
    with pytest.raises(ValueError, match="class labels"):  # encoding needs the labels
        model.posterior(x)


def test_cdcgan_shapes_and_the_label_changes_the_image():
    torch.manual_seed(0)
    model = cdcgan().eval()
    # at initialisation every class's gain is 1 and bias 0 (plain batch norm): give them their own
    with torch.no_grad():
        for cbn in model.generator.norms:
            cbn.gain.weight.normal_(1.0, 0.2)
            cbn.bias.weight.normal_(0.0, 0.2)
    z = torch.randn(5, 64)
    a, b = model.generate_class(torch.zeros(5, dtype=torch.long), z), model.generate_class(torch.full((5,), 4), z)
    assert a.shape == (5, *DIGITS) and not torch.allclose(a, b)
    assert model.generate(12).shape == (12, *DIGITS)
    with pytest.raises(ConfigError, match=r"^class=1[02] is invalid; allowed: class indices in 0 \.\. 9$"):
        model.generate_class(torch.tensor([10]))


def test_projection_discriminator_is_psi_plus_the_projection_by_hand():
    torch.manual_seed(0)
    d = ProjectionDiscriminator((1, 28, 28), outputs=1, num_classes=10, base_channels=8)
    x, y = torch.rand(5, 1, 28, 28) * 2 - 1, torch.tensor([0, 3, 3, 9, 1])
    phi = d.features(x).flatten(1)
    psi = phi @ d.head.weight.T + d.head.bias
    by_hand = psi[:, 0] + (d.embed.weight[y] * phi).sum(1)
    torch.testing.assert_close(d(x, y)[:, 0, 0], by_hand)
    # the label enters through the embedding only
    assert not torch.allclose(d(x, y), d(x, (y + 1) % 10))


def test_conditional_batch_norm_uses_the_class_gain_and_bias():
    torch.manual_seed(0)
    cbn = ConditionalBatchNorm(3, num_classes=4)
    with torch.no_grad():
        cbn.gain.weight.copy_(torch.arange(12.0).view(4, 3) + 1)
        cbn.bias.weight.copy_(-torch.arange(12.0).view(4, 3))
    h, y = torch.randn(6, 3, 5, 5), torch.tensor([0, 1, 2, 3, 2, 1])
    mean, var = h.mean((0, 2, 3), keepdim=True), h.var((0, 2, 3), unbiased=False, keepdim=True)
    normalised = (h - mean) / torch.sqrt(var + cbn.norm.eps)
    expected = cbn.gain.weight[y][:, :, None, None] * normalised + cbn.bias.weight[y][:, :, None, None]
    torch.testing.assert_close(cbn(h, y), expected)
    # at initialisation (gain 1, bias 0) it is plain batch norm
    fresh = ConditionalBatchNorm(3, num_classes=4)
    torch.testing.assert_close(fresh(h, y), torch.nn.functional.batch_norm(h, None, None, training=True))


def test_intra_fid_and_class_accuracy_on_a_known_case():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(600, 4, generator=g, dtype=torch.float64)
    labels = torch.arange(600) % 3
    shifts = torch.tensor([[0.0, 0, 0, 0], [1, 0, 0, 0], [0, 2, 0, 1]], dtype=torch.float64)
    # each class's fakes are its real features shifted: same covariance, so FID_c = |shift_c|^2
    fake = real + shifts[labels]
    mean, per_class = intra_fid(fake, labels, real, labels)
    assert per_class == pytest.approx({0: 0.0, 1: 1.0, 2: 5.0}, abs=1e-6)
    assert mean == pytest.approx(2.0, abs=1e-6)
    # a class's own FID only: other classes' images are not mixed in
    assert frechet_distance(fake[labels == 2], real[labels == 2]) == pytest.approx(5.0, abs=1e-6)
    logits = torch.nn.functional.one_hot(torch.tensor([0, 0, 1, 2, 2, 2]), 3).float()
    acc, per = class_accuracy(logits, torch.tensor([0, 0, 1, 1, 2, 0]))
    assert per == {0: pytest.approx(2 / 3), 1: 0.5, 2: 1.0}
    assert acc == pytest.approx((2 / 3 + 0.5 + 1) / 3)


def test_a_briefly_trained_cvae_generates_the_classes_asked_for(digits):
    """A conditional VAE trained for ~20 s on digits: the digits CNN (a classifier of real images,
    kept apart from training) reads the requested class from its samples well above chance (0.1)."""
    from genlab.metrics.fid import extract_features

    torch.manual_seed(0)
    model = cvae(latent_dim=8)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = digits.images("train"), digits.labels("train")
    model.train()
    for _ in range(25):
        for idx in torch.randperm(len(x)).split(64):
            loss = model.training_step((x[idx], y[idx]), 0)
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    labels = torch.arange(10).repeat_interleave(50)
    logits = extract_features(model.generate_class(labels), "genlab-digits-cnn", layer="logits")
    acc, per_class = class_accuracy(logits, labels)
    assert acc > 0.5, per_class


@pytest.mark.parametrize("model", ["cvae", "cdcgan"])
def test_preset_smoke_run_scores_and_draws_the_classes(smoke, tmp_path, model):
    from genlab.sample import parse_args, sample

    run = smoke(tmp_path / "run", f"model={model}", "data=digits")
    summary = json.loads((run / "summary.json").read_text())
    for key in ("val/intra_fid", "val/class_acc"):
        assert summary[key] == summary[key] and summary[key] >= 0, key  # finite
    assert not summary.get("metric_errors")
    assert (run / "samples" / "classes_final.png").is_file()
    # genlab-sample: n samples of one class, and the class-by-sample grid
    ckpt = str(run / "checkpoints" / "last.ckpt")
    out = sample(parse_args([f"ckpt={ckpt}", "class=3", "n=4", f"out={tmp_path / 'c3.png'}"]))
    assert out.is_file()
    assert sample(parse_args([f"ckpt={ckpt}", "mode=classes", "n=2", f"out={tmp_path / 'g.png'}"])).is_file()
    with pytest.raises(ConfigError, match=r"^class=1[02] is invalid; allowed: class indices in 0 \.\. 9$"):
        sample(parse_args([f"ckpt={ckpt}", "class=12", f"out={tmp_path / 'x.png'}"]))
    if model == "cvae":  # modes that encode test images without their labels are not offered
        for mode in ("reconstruct", "interpolate", "traversal"):
            with pytest.raises(ConfigError, match=rf"^mode='{mode}' is invalid for VAE; allowed: prior \| classes$"):
                sample(parse_args([f"ckpt={ckpt}", f"mode={mode}", f"out={tmp_path / 'x.png'}"]))


@pytest.mark.parametrize(("overrides", "match"), [
    (["model=cvae", "data=dsprites"], r"^model\.conditional=True is invalid; allowed: false on data without class labels"),
    (["model=cdcgan", "data=dsprites"], r"^model\.generator='conditional_dcgan' is invalid; allowed: an unconditional one \(dcgan, conv\) on data without"),
    (["model=cdcgan", "model/d_mode=noise_head", "corruption=gaussian"], r"^model\.d_mode='noise_head' is invalid; allowed: plain \| instance_noise"),
    (["model=cdcgan", "model/discriminator=conv"], r"^model\.discriminator='conv' is invalid; allowed: a conditional one"),
    (["model=dcgan", "model/discriminator=projection"], r"^model\.discriminator='projection' is invalid; allowed: an unconditional one"),
    (["model=cvae", "model/prior=vamp"], r"^model\.prior='vamp' is invalid; allowed: standard_normal \| mog with model\.conditional=true"),
])
def test_conditional_models_without_labels_or_with_label_blind_parts_are_refused(tmp_path, overrides, match):
    cfg = make_cfg(tmp_path, *overrides)
    with pytest.raises(ConfigError, match=match) as e:
        build_model(cfg.model, DATASETS[cfg.data.name].image_shape)
    assert "\n" not in str(e.value)


def test_a_conditional_model_refuses_data_without_class_labels_in_one_line(digits):
    class Unlabelled:
        name = "dsprites"

    with pytest.raises(ConfigError, match=r"^model\.conditional=true needs data with class labels; "
                                          r"data 'dsprites' has none; allowed: data=digits") as e:
        require_class_data(Unlabelled(), 10, "model.conditional=true")
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=r"^model\.num_classes=3 is invalid; allowed: 10"):
        require_class_data(digits, 3, "model.conditional=true")


def test_genlab_sample_refuses_class_for_an_unconditional_checkpoint(smoke, tmp_path):
    from genlab.sample import parse_args, sample

    run = smoke(tmp_path / "run", "model=vae", "data=digits", "callbacks.evaluation=null")
    with pytest.raises(ConfigError, match=r"^class=3 is invalid for this VAE: it is not class-conditional"):
        sample(parse_args([f"ckpt={run / 'checkpoints' / 'last.ckpt'}", "class=3", f"out={tmp_path / 'x.png'}"]))


@pytest.mark.parametrize("model", ["cvae", "cdcgan", "vae", "dcgan"])
def test_the_conditional_study_composes_and_builds_each_arm(tmp_path, model):
    sweep = OmegaConf.load(CONF / "experiment" / "conditional.yaml").hydra.sweeper.params
    assert (sweep.model, sweep.seed) == ("cvae,cdcgan,vae,dcgan", "0,1,2")
    cfg = make_cfg(tmp_path, "experiment=conditional", f"model={model}")
    assert (cfg.data.name, cfg.metrics.n_samples, cfg.metrics.real_split) == ("fashion_mnist", 10000, "test")
    built = build_model(cfg.model, DATASETS[cfg.data.name].image_shape)
    assert isinstance(built, ClassConditional) == model.startswith("c")
    assert built.hparams.num_classes == 10
