"""The shortcut probe sees noise easily and a histogram-preserving rotation barely."""

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from genlab.probe import (
    DEFAULT_LEVELS,
    HIST_BINS,
    clean_vs_degraded,
    image_statistics,
    main,
    probe_accuracy,
)

CONF = Path(__file__).resolve().parents[1] / "conf" / "corruption"


@pytest.fixture(scope="module")
def digits():
    from genlab.data import DigitsDataModule

    dm = DigitsDataModule(val_size=150)
    dm.setup()
    return dm.images("train", 1000)  # 500 clean vs 500 degraded; 300 held out


def test_image_statistics_values():
    x = torch.zeros(2, 1, 8, 8)
    x[1] = 1.0
    x[1, 0, 0, 0] = 0.5
    s = image_statistics(x)
    assert s.shape == (2, 4 + HIST_BINS)
    assert s[0, 0] == 0 and s[0, 1] == 0 and s[0, 2] == 0 and s[0, 3] == 0
    assert s[0, 4] == 1 and s[0, 5:].sum() == 0  # all pixels in the first bin
    assert s[1, 4 + HIST_BINS - 1] == 63 / 64 and s[1, 4 + HIST_BINS // 2] == 1 / 64  # 1.0 in the last bin
    assert np.allclose(s[:, 4:].sum(1), 1)
    assert s[1, 2] > 0  # the odd corner pixel makes edges; interior Laplacian is 0
    assert s[1, 3] == 0


def test_probe_accuracy_chance_and_perfect():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(400, 1, 8, 8, generator=g), torch.rand(400, 1, 8, 8, generator=g)
    # the same distribution: chance; 240 held out gives a standard error of 0.032
    assert abs(probe_accuracy(a, b) - 0.5) < 0.12
    assert probe_accuracy(a, 0.5 * b) == 1.0  # half the mean and std: trivially separable


def test_gaussian_noise_is_easy_and_rotation_is_hard(digits):
    noisy = clean_vs_degraded(digits, "gaussian", 0.1)
    rotated = clean_vs_degraded(digits, "rotate_crop", 90.0)
    # measured on this data (seed 0): gaussian 0.98, rotate_crop 0.76 (0.76-0.82 over seeds 0-2);
    # the standard error of each is about 0.03 with 300 held-out images
    assert noisy > 0.9
    assert rotated < 0.88
    assert noisy - rotated > 0.1


def test_rotation_leaves_histogram_statistics_unchanged(digits):
    # mean, std and histogram of a rotated image equal its own exactly: only the seam at the
    # disc's edge (gradient and Laplacian energy) can give rotate_crop away
    from genlab.corruption import Corruption

    degraded = Corruption("rotate_crop", 90.0)(digits, generator=torch.Generator().manual_seed(0))
    a, b = image_statistics(digits), image_statistics(degraded)
    assert np.array_equal(a[:, 4:], b[:, 4:])  # histogram: bit-identical
    assert np.allclose(a[:, :2], b[:, :2], rtol=0, atol=1e-12)  # mean, std: up to summation order
    assert not np.array_equal(a[:, 2:4], b[:, 2:4])


def test_default_levels_match_the_configs():
    for kind, level in DEFAULT_LEVELS.items():
        assert OmegaConf.load(CONF / f"{kind}.yaml").level == level


def test_cli_prints_accuracy(capsys):
    main(["--data", "digits", "--corruption", "blur", "--n", "400"])
    out = capsys.readouterr().out
    line = next(li for li in out.splitlines() if li.strip().startswith("blur"))
    assert 0.9 < float(line.split("accuracy=")[1]) <= 1.0
