"""Procedural dSprites: 2D shapes rendered from their factors, the full grid, deterministic.

The factor grid follows the original dataset (Matthey et al. 2017): 3 shapes (square, ellipse,
heart) x 6 scales (0.5..1) x 40 orientations (0..2pi, both ends included, so the first and the last
orientation draw the same image, and symmetric shapes repeat under some rotations) x 32 x 32
positions = 737,280 binary images of 64x64. Index order is shape, scale, orientation, x, y with y
fastest, as in the original. Images are rendered on demand from their index on the batch's
device (the full grid would take 3 GB as uint8), so nothing is cached and every call agrees.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from genlab.capabilities import NamedFactors
from genlab.data.base import DATASETS, InMemoryDataModule

FACTOR_NAMES = ("shape", "scale", "orientation", "pos_x", "pos_y")
FACTOR_SIZES = (3, 6, 40, 32, 32)
# the smallest rotation that maps each shape onto itself: a square repeats every 90 degrees, an
# ellipse every 180, the heart only after a full turn
SYMMETRY = (math.pi / 2, math.pi, 2 * math.pi)
N_IMAGES = math.prod(FACTOR_SIZES)  # 737,280
SIZE = 64


def factor_values(name: str) -> Tensor:
    """The value of each level of a factor (shape: 0, 1, 2 for square, ellipse, heart)."""
    return {
        "shape": torch.arange(3, dtype=torch.float64),
        "scale": torch.linspace(0.5, 1.0, 6, dtype=torch.float64),
        "orientation": torch.linspace(0, 2 * math.pi, 40, dtype=torch.float64),
        "pos_x": torch.linspace(0, 1, 32, dtype=torch.float64),
        "pos_y": torch.linspace(0, 1, 32, dtype=torch.float64),
    }[name]


def index_to_factors(idx: Tensor) -> Tensor:
    """Grid indices [B] -> factor level indices [B, 5] (shape, scale, orientation, x, y)."""
    out = []
    rest = idx.long()
    for size in reversed(FACTOR_SIZES):
        out.append(rest % size)
        rest = rest // size
    return torch.stack(out[::-1], dim=1)


def factors_to_index(factors: Tensor) -> Tensor:
    idx = torch.zeros(factors.shape[0], dtype=torch.long, device=factors.device)
    for i, size in enumerate(FACTOR_SIZES):
        idx = idx * size + factors[:, i].long()
    return idx


def angle(level: Tensor) -> Tensor:
    """Orientation levels -> the rotation drawn, in radians: level 39 is 2 pi, the same angle as
    level 0, so it is reduced first and both draw the same image."""
    return (level % 39).float() * (2 * math.pi / 39)


def rotation(factors: Tensor) -> tuple[Tensor, Tensor]:
    """Factor level indices [B, 5] -> (the drawn rotation in radians in [0, 2 pi), the shape's
    symmetry period in radians), each float [B]. Level 39 is drawn as level 0 (see `render`)."""
    f = factors.long()
    theta = angle(f[:, 2])
    period = torch.tensor(SYMMETRY, device=f.device)[f[:, 0]]
    return theta, period


def render(factors: Tensor) -> Tensor:
    """Factor level indices [B, 5] -> uint8 images [B, 1, 64, 64] with values 0 or 255."""
    f = factors.long()
    device = f.device
    shape = f[:, 0]
    half = 10.0 * (0.5 + 0.1 * f[:, 1].float())  # half-size in pixels: 5..10
    theta = angle(f[:, 2])
    cx = 14.0 + 36.0 * f[:, 3].float() / 31.0
    cy = 14.0 + 36.0 * f[:, 4].float() / 31.0
    grid = torch.arange(SIZE, dtype=torch.float32, device=device) + 0.5
    dy = grid.view(1, SIZE, 1) - cy.view(-1, 1, 1)
    dx = grid.view(1, 1, SIZE) - cx.view(-1, 1, 1)
    c, s = torch.cos(theta).view(-1, 1, 1), torch.sin(theta).view(-1, 1, 1)
    u = (c * dx + s * dy) / half.view(-1, 1, 1)  # coordinates in the sprite's own frame
    v = (-s * dx + c * dy) / half.view(-1, 1, 1)
    square = torch.maximum(u.abs(), v.abs()) <= 1.0
    ellipse = u**2 + (v / 0.5) ** 2 <= 1.0
    hx, hy = 1.1 * u, -1.1 * v + 0.1
    heart = (hx**2 + hy**2 - 1) ** 3 - hx**2 * hy**3 <= 0
    sel = shape.view(-1, 1, 1)
    inside = torch.where(sel == 0, square, torch.where(sel == 1, ellipse, heart))
    return (inside.to(torch.uint8) * 255).unsqueeze(1)


@DATASETS.register("dsprites")
class DSpritesDataModule(InMemoryDataModule, NamedFactors):
    """dSprites batches: images rendered from grid indices; labels are factor level indices."""

    fid_extractor = "genlab-dsprites-cnn"  # the default FID feature extractor (genlab.metrics.extractors)
    factor_sizes = FACTOR_SIZES  # KnownFactors: the grid is uniform over these levels
    factor_names = FACTOR_NAMES  # NamedFactors
    periodic_factors = ("orientation",)
    image_shape = (1, SIZE, SIZE)
    binary = True

    def __init__(self, test_size: int = 10_000, **kwargs):
        kwargs.setdefault("val_size", 10_000)
        super().__init__(**kwargs)
        self.test_size = test_size

    def load(self):
        perm = torch.randperm(N_IMAGES, generator=torch.Generator().manual_seed(737280))
        test, train = perm[: self.test_size], perm[self.test_size :]
        return {"train": (train, None), "test": (test, None)}

    @staticmethod
    def render(factors: Tensor) -> Tensor:
        return render(factors)

    @staticmethod
    def rotation(factors: Tensor, name: str) -> tuple[Tensor, Tensor]:
        if name != "orientation":
            raise ValueError(f"{name!r} is not a periodic factor of dSprites")
        return rotation(factors)

    def fetcher(self, split: str):
        grid_idx, _ = self.splits[split]
        device = self._device()

        def fetch(idx: Tensor):
            factors = index_to_factors(grid_idx[idx.cpu()]).to(device)
            return render(factors), factors

        return fetch, len(grid_idx)
