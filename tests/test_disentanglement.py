"""Disentanglement scores on synthetic codes with known answers, and on genlab's dSprites."""

import pytest
import torch

from genlab.data import dsprites
from genlab.metrics.disentanglement import (
    dci,
    factor_vae_score,
    mig,
    mutual_info_matrix,
    sample_codes,
)

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
