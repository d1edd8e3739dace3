"""Feature extractors: shipped weights, accuracy, full-rank features, sanity FIDs, Inception offline."""

import time

import numpy as np
import pytest
import torch
from conftest import DATA, mnist_raw
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from genlab.data import (
    DigitsDataModule,
    DSpritesDataModule,
    FashionMNISTDataModule,
    MNISTDataModule,
)
from genlab.metrics import extractors
from genlab.metrics.extractors import (
    DOMAIN,
    INCEPTION_URL,
    ExtractorUnavailable,
    domain_weights_path,
    extractor_image_shape,
    load_domain_cnn,
)
from genlab.metrics.fid import RealReference, cache_key, extract_features, sample_metrics
from genlab.metrics.train_extractor import BLUR_LADDER, NOISE_LADDER, evaluate, main, sanity_fids


@pytest.fixture(scope="module")
def fmnist():
    dm = FashionMNISTDataModule(root=str(DATA), download=False, val_size=0)
    dm.setup()
    return dm


@pytest.fixture(scope="module")
def mnist():
    mnist_raw()
    dm = MNISTDataModule(root=str(DATA), download=False, val_size=0)
    dm.setup()
    return dm


@pytest.mark.parametrize("name", sorted(DOMAIN))
def test_shipped_weights_are_small_safe_and_registered(name):
    path = domain_weights_path(name)
    assert path.stat().st_size < 2_000_000
    blob = torch.load(path, map_location="cpu", weights_only=True)
    assert blob["command"].startswith("python -m genlab.metrics.train_extractor --data ")
    assert len(blob["test_accuracy"]) == len(DOMAIN[name]["heads"])
    assert issubclass(FEATURE_EXTRACTORS_REGISTRY[name], FeatureExtractorBase)
    fx = FEATURE_EXTRACTORS_REGISTRY[name](name, ["features", "logits"])
    x = torch.randint(0, 256, (3, *extractor_image_shape(name)), dtype=torch.uint8)
    features, logits = fx(x)
    assert features.shape == (3, 128) and logits.shape == (3, DOMAIN[name]["heads"][0])
    with pytest.raises(ValueError, match="uint8"):
        fx(x.float())


@pytest.mark.parametrize("name,data,least", [("genlab-fmnist-cnn", "fmnist", 0.90),
                                              ("genlab-mnist-cnn", "mnist", 0.98)])
def test_extractor_accuracy_as_recorded(name, data, least, request):
    net = load_domain_cnn(name)
    (accuracy,) = evaluate(net, request.getfixturevalue(data), name)
    assert accuracy >= least
    recorded = torch.load(domain_weights_path(name), weights_only=True)["test_accuracy"][0]
    assert accuracy == pytest.approx(recorded, abs=0.002)


def _real_images(name, n):
    if name == "genlab-fmnist-cnn":
        dm = FashionMNISTDataModule(root=str(DATA), download=False)
    elif name == "genlab-mnist-cnn":
        mnist_raw()
        dm = MNISTDataModule(root=str(DATA), download=False)
    elif name == "genlab-digits-cnn":
        dm = DigitsDataModule(val_size=0)
    else:
        dm = DSpritesDataModule()
    dm.setup()
    return dm.images("train", n)


@pytest.mark.parametrize("name,n", [("genlab-fmnist-cnn", 2000), ("genlab-digits-cnn", 1500),
                                    ("genlab-dsprites-cnn", 1000), ("genlab-mnist-cnn", 2000)])
def test_features_have_full_rank_covariance_on_real_data(name, n):
    f = extract_features(_real_images(name, n), name).double().numpy()
    eig = np.linalg.eigvalsh(np.cov(f, rowvar=False))
    assert eig.min() > 1e-8 * eig.max()
    assert np.linalg.matrix_rank(np.cov(f, rowvar=False)) == f.shape[1]


def test_sanity_fids_order_floor_noised_blurred(fmnist):
    fids = sanity_fids("genlab-fmnist-cnn", fmnist, n=1500, noise=(0.1,), blur=(1.0,))
    print("sanity FIDs (n=1500):", {k: round(v, 2) for k, v in fids.items()})
    assert 10 * fids["floor"] < fids["noise 0.1"] < fids["blur 1"]


def test_mnist_sanity_fids_climb_the_degradation_ladder(mnist):
    fids = sanity_fids("genlab-mnist-cnn", mnist, n=1000)
    print("sanity FIDs (n=1000):", {k: round(v, 2) for k, v in fids.items()})
    for kind, ladder in (("noise", NOISE_LADDER), ("blur", BLUR_LADDER)):
        climb = [fids["floor"], *(fids[f"{kind} {s:g}"] for s in ladder)]
        assert climb == sorted(climb) and len(set(climb)) == len(climb), (kind, climb)


def test_train_extractor_cli_retrains_and_records(tmp_path, capsys):
    out = tmp_path / "digits.pt"
    main(["--data", "digits", "--steps", "30", "--out", str(out), "--device", "cpu"])
    printed = capsys.readouterr().out
    assert "genlab-digits-cnn test accuracy per head:" in printed
    blob = torch.load(out, weights_only=True)
    assert blob["command"] == f"python -m genlab.metrics.train_extractor --data digits --steps 30 --out {out} --device cpu"
    assert load_domain_cnn("genlab-digits-cnn", out) is not None


# -- Inception ---------------------------------------------------------------------------------------
@pytest.fixture
def offline_empty_hub(tmp_path, monkeypatch):
    """An empty torch.hub cache and no network."""
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    monkeypatch.setattr(extractors, "_online", lambda *a, **k: False)
    yield tmp_path
    torch.hub.set_dir(old)


def test_inception_absent_offline_says_how_to_provide_it(offline_empty_hub):
    fake = torch.rand(4, 1, 28, 28)
    t0 = time.time()
    with pytest.raises(ExtractorUnavailable) as err:
        sample_metrics(fake, fake, "inception-v3-compat", metrics=("fid",))
    assert time.time() - t0 < 5
    assert INCEPTION_URL in str(err.value) and "metrics.inception_weights=" in str(err.value)
    with pytest.raises(ExtractorUnavailable, match="does not exist"):
        sample_metrics(fake, fake, "inception-v3-compat", metrics=("fid",),
                       inception_weights=str(offline_empty_hub / "nowhere.pth"))


def test_network_probe_is_bounded_in_time():
    t0 = time.time()
    assert extractors._online("genlab-no-such-host.invalid", timeout=1.0) is False
    assert time.time() - t0 < 5


def test_inception_runs_from_a_weights_file(offline_empty_hub, monkeypatch):
    # Inception's real weights are a 91 MB download; randomly initialised ones in the same format
    # check the plumbing: path argument, grey -> RGB, the weights hash in the cache key
    empty = offline_empty_hub / "empty.pt"
    torch.save({}, empty)
    with monkeypatch.context() as m:
        m.setattr(FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None)
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty))
    weights = offline_empty_hub / "random-inception.pth"
    torch.save(net.state_dict(), weights)
    g = torch.Generator().manual_seed(0)
    fake, real = torch.rand(6, 1, 28, 28, generator=g), torch.rand(6, 1, 28, 28, generator=g)
    out = sample_metrics(fake, real, "inception-v3-compat", metrics=("fid",), inception_weights=str(weights),
                         batch_size=6)
    assert out["fid_extractor"] == "inception-v3-compat" and np.isfinite(out["fid"])
    ref = RealReference("fashion_mnist", "train", 6, real)
    key = cache_key(ref, "inception-v3-compat", inception_weights=str(weights))
    assert extractors._file_sha256(weights)[:16] in key
