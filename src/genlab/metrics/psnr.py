"""Peak signal-to-noise ratio of restored images against their clean originals (the restoration
GAN's val/psnr and val/psnr_input)."""

from __future__ import annotations

import torch
from torch import Tensor

# the smallest mean squared error scored: identical images get 10 log10(1 / MSE_FLOOR) = 100 dB
MSE_FLOOR = 1e-10


def psnr(x: Tensor, target: Tensor) -> Tensor:
    """Peak signal-to-noise ratio per image [B] in dB for images in [0, 1]: 10 log10(1 / MSE);
    higher is better (capped at 100 dB for identical images)."""
    mse = (x - target).pow(2).flatten(1).mean(1).clamp_min(MSE_FLOOR)
    return -10 * torch.log10(mse)
