"""genlab.metrics.psnr: known answers in dB."""

import pytest
import torch

from genlab.metrics.psnr import psnr


def test_a_constant_error_of_a_tenth_is_20_db():
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.8
    assert psnr(x + 0.1, x).tolist() == pytest.approx([20.0] * 3, abs=1e-4)
    assert psnr(x - 0.01, x).tolist() == pytest.approx([40.0] * 3, abs=1e-3)


def test_per_image_and_symmetric():
    x = torch.zeros(2, 3, 4, 4)
    y = x.clone()
    y[1] += 0.1  # only the second image differs
    assert psnr(y, x)[1].item() == pytest.approx(20.0, abs=1e-4)
    assert torch.equal(psnr(y, x), psnr(x, y))


def test_identical_images_get_the_cap():
    x = torch.rand(2, 1, 5, 5)
    assert psnr(x, x).tolist() == pytest.approx([100.0, 100.0])
