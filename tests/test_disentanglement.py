"""Disentanglement scores on synthetic codes with known answers, on genlab's dSprites, and in the
evaluation callback for any data module that declares known factors."""

import pytest
import pytorch_lightning as pl
import torch

from genlab.callbacks.evaluation import Evaluation
from genlab.callbacks.evaluators import Disentanglement, SampleQuality
from genlab.capabilities import Encoder, KnownFactors
from genlab.config import ConfigError
from genlab.data import DigitsDataModule, InMemoryDataModule, dsprites
from genlab.metrics.disentanglement import (
    dci,
    factor_vae_score,
    mig,
    mutual_info_matrix,
    sample_codes,
)
from genlab.models.dae import DAE
from genlab.models.vae import VAE

SIZES = (5, 6, 8, 4)
K = len(SIZES)
MEAN = torch.tensor([(s - 1) / 2 for s in SIZES], dtype=torch.float64)
STD = torch.tensor([((s**2 - 1) / 12) ** 0.5 for s in SIZES], dtype=torch.float64)


def render(factors):
    """'Observations' are the standardised factor levels themselves."""
    return (factors.double() - MEAN) / STD


def identity(x):
    return x


ROTATION = torch.linalg.qr(torch.randn(K, K, generator=torch.Generator().manual_seed(1), dtype=torch.float64))[0]


def rotated(x):
    return x @ ROTATION


# maximal mixing: a scaled Hadamard matrix, orthogonal with every squared entry 1/K, spreads
# each factor equally over all codes (this is why K = 4: no such real matrix exists for K = 3)
SPREAD = torch.tensor([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]],
                      dtype=torch.float64) / 2


def spread(x):
    return x @ SPREAD


def test_spread_mixing_is_orthogonal_with_equal_weights():
    assert torch.allclose(SPREAD @ SPREAD.T, torch.eye(K, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(SPREAD**2, torch.full((K, K), 1 / K, dtype=torch.float64), atol=1e-12)


@pytest.fixture(scope="module")
def arrays():
    """codes and factors for each encoder: 10,000 points for MIG, 600 / 300 for DCI."""
    out = {}
    for name, enc in {"identity": identity, "rotated": rotated, "spread": spread}.items():
        out[name] = (sample_codes(enc, SIZES, render, 10_000, seed=0),
                     sample_codes(enc, SIZES, render, 600, seed=1),
                     sample_codes(enc, SIZES, render, 300, seed=2))
    return out


def test_mig_known_answers(arrays):
    scores = {name: mig(*a[0]) for name, a in arrays.items()}
    assert scores["identity"] > 0.97  # each factor is one code (up to the finite-sample MI bias)
    assert scores["rotated"] < scores["identity"] - 0.3
    assert scores["spread"] < 0.05  # every code carries the same information about every factor


def test_factor_vae_known_answers():
    kw = dict(n_train=1500, n_eval=1000, n_variance=3000)
    assert factor_vae_score(identity, SIZES, render, **kw)["eval_accuracy"] == 1.0
    # with every factor spread equally over all codes, the argmin dimension is independent of the
    # fixed factor, so held-out accuracy is chance: 1/K
    spread_score = factor_vae_score(spread, SIZES, render, **kw)["eval_accuracy"]
    assert abs(spread_score - 1 / K) < 0.07
    # (a random rotation can still score 1.0 here: the FactorVAE score only asks that each factor
    # have one dimension it shrinks most, which is why MIG and DCI are checked on it instead)


def test_dci_known_answers(arrays):
    ident = dci(*arrays["identity"][1], *arrays["identity"][2])
    assert ident["disentanglement"] > 0.95 and ident["completeness"] > 0.95
    assert ident["informativeness_test"] > 0.95
    rot = dci(*arrays["rotated"][1], *arrays["rotated"][2])
    assert rot["disentanglement"] < ident["disentanglement"] - 0.3
    assert rot["completeness"] < ident["completeness"] - 0.3
    spread_scores = dci(*arrays["spread"][1], *arrays["spread"][2], model="forest")
    assert spread_scores["disentanglement"] < 0.05 and spread_scores["completeness"] < 0.05
    forest = dci(*arrays["identity"][1], *arrays["identity"][2], model="forest")
    assert forest["disentanglement"] > 0.95


def centroid_encoder(images):
    """A hand-made 'encoder' of dSprites images: centroid x, centroid y, area (in pixels)."""
    x = images.double() / 255
    area = x.sum(dim=(1, 2, 3))
    grid = torch.arange(x.shape[-1], dtype=torch.float64)
    cx = (x.sum(dim=(1, 2)) * grid).sum(-1) / area
    cy = (x.sum(dim=(1, 3)) * grid).sum(-1) / area
    return torch.stack([cx, cy, area], dim=1)


def test_usable_with_genlab_dsprites():
    codes, factors = sample_codes(centroid_encoder, dsprites.FACTOR_SIZES, dsprites.render, 2000)
    assert codes.shape == (2000, 3) and factors.shape == (2000, 5)
    m = mutual_info_matrix(codes, factors)
    names = list(dsprites.FACTOR_NAMES)
    # by construction: x position is read by code 0, y by code 1, scale by the area (code 2)
    assert m[:, names.index("pos_x")].argmax() == 0
    assert m[:, names.index("pos_y")].argmax() == 1
    assert m[:, names.index("scale")].argmax() == 2
    assert 0 < mig(codes, factors) < 1
    score = factor_vae_score(centroid_encoder, dsprites.FACTOR_SIZES, dsprites.render,
                             batch_size=32, n_train=200, n_eval=100, n_variance=1000)
    assert score["num_active_dims"] == 3
    assert score["eval_accuracy"] > 1 / 5 + 0.1  # above chance: it sees 3 of the 5 factors


# -- declared capabilities: a dataset with known factors is one class ----------------------------------
class Squares(InMemoryDataModule, KnownFactors):
    """A 2x2 white square on a black 8x8 image; its factors are its row and its column."""

    name = "squares"
    image_shape = (1, 8, 8)
    factor_sizes = (7, 7)

    @staticmethod
    def render(factors: torch.Tensor) -> torch.Tensor:
        f = factors.long()
        r = torch.arange(8, device=f.device).view(1, 8)
        rows = (r >= f[:, :1]) & (r < f[:, :1] + 2)
        cols = (r >= f[:, 1:]) & (r < f[:, 1:] + 2)
        return ((rows[:, :, None] & cols[:, None, :]).to(torch.uint8) * 255).unsqueeze(1)

    def load(self):
        grid = torch.cartesian_prod(torch.arange(7), torch.arange(7))
        train = grid.repeat(10, 1)
        return {"train": (self.render(train), train), "test": (self.render(grid), grid)}


def _evaluation() -> Evaluation:
    """FID and disentanglement only; Squares is not in genlab.data.DATASETS, so the extractor is
    named (digits' fits its 8x8 images)."""
    return Evaluation([SampleQuality(which=["fid"]), Disentanglement(points=200, factor_vae_votes=20)],
                      extractor="genlab-digits-cnn", n_samples=100, every_n_epochs=0)


def _trainer(tmp_path, cb) -> pl.Trainer:
    return pl.Trainer(max_epochs=1, limit_train_batches=4, limit_val_batches=1, callbacks=[cb],
                      logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=tmp_path, accelerator="cpu")


def test_capabilities_are_declared():
    assert isinstance(VAE(image_shape=(1, 8, 8)), Encoder)
    assert not isinstance(DAE(image_shape=(1, 8, 8)), Encoder)
    assert isinstance(Squares(), KnownFactors) and isinstance(dsprites.DSpritesDataModule(), KnownFactors)
    assert not isinstance(DigitsDataModule(), KnownFactors)


def test_data_that_declares_known_factors_gets_disentanglement_scores(tmp_path):
    """Squares is not dSprites and not named anywhere in genlab: declaring KnownFactors is all
    the evaluation needs. The scores are computed at the final validation, in [0, 1]."""
    pl.seed_everything(0, verbose=False)
    cb = _evaluation()
    model = VAE(image_shape=(1, 8, 8), latent_dim=4, loglik_samples=0)
    trainer = _trainer(tmp_path, cb)
    dm = Squares(batch_size=32, val_size=49)
    trainer.fit(model, datamodule=dm)
    (out,) = trainer.validate(model, datamodule=dm, verbose=False)
    for key in ("val/mig", "val/factor_vae", "val/dci_disentanglement", "val/dci_completeness",
                "val/dci_informativeness"):
        assert 0 <= out[key] <= 1, key
    assert cb.metric_errors == {}


def test_disentanglement_without_known_factors_fails_before_training(tmp_path):
    model = VAE(image_shape=(1, 8, 8), latent_dim=4, loglik_samples=0)
    trainer = _trainer(tmp_path, _evaluation())
    with pytest.raises(ConfigError, match="metrics.disentanglement is on, but data 'digits' does not "
                                          "declare KnownFactors; allowed: metrics.disentanglement=null"):
        trainer.fit(model, datamodule=DigitsDataModule(val_size=150))
    assert trainer.global_step == 0
