"""DiffAugment's corruption kinds (translation, cutout, color and the diffaugment policy): known
answers, gradients to the images, reproducible draws, per-image and scheduled levels, bad levels,
and a DCGAN smoke run with the instance_noise game for each."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import NO_EVAL, make_cfg

from genlab.config import ConfigError
from genlab.corruption import Corruption
from genlab.models.games import GAMES
from genlab.seeding import ExampleNoise

NEW = ("translation", "cutout", "color", "diffaugment")
DEFAULT = {"translation": 0.125, "cutout": 0.5, "color": 1.0, "diffaugment": 1.0}


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def images(b=16, c=1, h=28, w=28, seed=1):
    return torch.rand(b, c, h, w, generator=gen(seed))


def shifted(x, dy: int, dx: int):
    """x [C, H, W] with its content moved down dy and right dx, zeros coming in (by slicing)."""
    _, h, w = x.shape
    p = max(abs(dy), abs(dx), 1)
    padded = F.pad(x, (p, p, p, p))
    return padded[:, p - dy : p - dy + h, p - dx : p - dx + w]


def marker_shift(out):
    """Where the single 1 of a marker channel went, as (dy, dx) from the centre (14, 14)."""
    idx = out.flatten().argmax().item()
    return idx // out.shape[-1] - 14, idx % out.shape[-1] - 14


def zero_box(out):
    """The bounding box (rows, cols) of an image's zeros and their count."""
    zero = (out == 0).all(0)
    rows, cols = zero.any(1).nonzero().flatten(), zero.any(0).nonzero().flatten()
    return rows, cols, int(zero.sum())


# --- known answers -------------------------------------------------------------------------------


def test_translation_moves_a_known_pixel_with_zero_padding():
    """The documented draw: two uniforms per image, rows first; shift = floor(u (2s + 1)) - s with
    s = round(level * side) = round(3.5) = 4 px (half up, as DiffAugment's int(28 / 8 + 0.5))."""
    x = torch.zeros(8, 2, 28, 28)
    x[:, 0, 14, 14] = 1.0  # a marker
    x[:, 1] = images(8)[:, 0] + 0.1  # content, > 0 everywhere
    out = Corruption("translation", 0.125)(x, generator=gen(3))
    u = torch.rand(8, 2, generator=gen(3))
    expected = (u * 9).floor().long() - 4
    for b in range(8):
        dy, dx = expected[b].tolist()
        assert marker_shift(out[b, 0]) == (dy, dx)
        assert torch.equal(out[b], shifted(x[b], dy, dx))
        # zero padding: exactly the rows and columns that came in from outside are 0
        assert int((out[b, 1] == 0).sum()) == 28 * 28 - (28 - abs(dy)) * (28 - abs(dx))
    assert expected.abs().max() > 0  # the draws did move something


def test_translation_shifts_are_uniform_up_to_the_level():
    x = torch.zeros(900, 1, 28, 28)
    x[:, 0, 14, 14] = 1.0
    out = Corruption("translation", 0.125)(x, generator=gen())
    shifts = torch.tensor([marker_shift(o[0]) for o in out])
    for axis in range(2):
        counts = torch.bincount(shifts[:, axis] + 4, minlength=9)
        assert len(counts) == 9  # no shift beyond 4 px
        # 900 draws over 9 values: 100 each, std ~9.4; 60 is over 4 std below
        assert (counts > 60).all(), counts


def test_cutout_zeroes_exactly_a_square_of_the_expected_side():
    x = images(400, c=3) + 0.1  # > 0: a zero can only be the cut
    out = Corruption("cutout", 0.5)(x, generator=gen())
    s = 14
    whole = 0
    for b in range(len(x)):
        rows, cols, n = zero_box(out[b])
        # a rectangle (the square clipped to the image), on every channel, the rest untouched
        assert n == len(rows) * len(cols)
        assert torch.equal(rows, torch.arange(rows[0], rows[0] + len(rows)))
        assert torch.equal(cols, torch.arange(cols[0], cols[0] + len(cols)))
        assert (out[b][:, rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] == 0).all()
        keep = torch.ones(28, 28, dtype=torch.bool)
        keep[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] = False
        assert torch.equal(out[b][:, keep], x[b][:, keep])
        # the side is s where the square lies inside; at least half of it is always inside
        assert s // 2 <= len(rows) <= s and s // 2 <= len(cols) <= s
        for side, first in ((len(rows), rows[0]), (len(cols), cols[0])):
            assert side == s or first == 0 or first + side == 28
        whole += n == s * s
    # the first row is uniform in {-7, ..., 21}: the square is whole in 15 of 29 places per axis
    assert abs(whole / 400 - (15 / 29) ** 2) < 0.08


def test_cutout_odd_side_and_per_axis_sides():
    # level 0.25 on a 12 x 20 image: a 3 x 5 rectangle (round(3.0), round(5.0))
    x = images(64, h=12, w=20) + 0.1
    out = Corruption("cutout", 0.25)(x, generator=gen())
    sizes = {(len(r), len(c)) for r, c, _ in map(zero_box, out)}
    assert (3, 5) in sizes and all(2 <= r <= 3 and 3 <= c <= 5 for r, c in sizes)


def test_color_known_answer_and_grey_images():
    """brightness, saturation, contrast with the documented draws (three per image, in that order)."""
    x = images(6, c=3)
    t = 0.7
    out = Corruption("color", t)(x, generator=gen(4))
    u = torch.rand(6, 3, generator=gen(4)).view(6, 3, 1, 1)
    y = x + t * (u[:, 0:1] - 0.5) / 2
    m = y.mean(1, keepdim=True)
    y = m + (y - m) * (1 + t * (2 * u[:, 1:2] - 1))
    m = y.mean((1, 2, 3), keepdim=True)
    y = m + (y - m) * (1 + t * (u[:, 2:3] - 0.5))
    assert torch.allclose(out, y, atol=1e-6)
    # grey content: saturation has no effect, so 3 equal channels come out as the 1-channel result
    grey = images(6)
    one = Corruption("color", 1.0)(grey, generator=gen(4))
    three = Corruption("color", 1.0)(grey.expand(6, 3, 28, 28), generator=gen(4))
    assert torch.allclose(three, one.expand(6, 3, 28, 28), atol=1e-6)


def test_color_ranges_at_full_strength():
    # a constant image: only brightness moves it, by at most 0.25 (the paper's +-0.5 on [-1, 1])
    const = torch.full((500, 1, 4, 4), 0.5)
    shift = (Corruption("color", 1.0)(const, generator=gen()) - 0.5)[:, 0, 0, 0]
    assert shift.abs().max() <= 0.25 and shift.min() < -0.2 and shift.max() > 0.2
    # contrast scales the deviations from the mean by a factor in [0.5, 1.5]
    x = images(500)
    out = Corruption("color", 1.0)(x, generator=gen())
    ratio = out.flatten(1).std(1) / x.flatten(1).std(1)
    assert ratio.min() >= 0.5 - 1e-4 and ratio.max() <= 1.5 + 1e-4
    assert ratio.min() < 0.6 and ratio.max() > 1.4


def test_diffaugment_is_color_translation_cutout_in_sequence():
    x = images(8, c=3)
    g = gen(7)
    expected = x
    for kind, level in (("color", 0.6), ("translation", 0.6 / 8), ("cutout", 0.6 / 2)):
        expected = Corruption(kind, level)(expected, generator=g)
    assert torch.equal(Corruption("diffaugment", 0.6)(x, generator=gen(7)), expected)


@pytest.mark.parametrize("kind", NEW)
def test_level_zero_is_the_identity(kind):
    x = images(8, c=3)
    assert torch.equal(Corruption(kind, 0.0)(x, generator=gen()), x)


# --- gradients -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", NEW)
def test_gradient_flows_to_the_images(kind):
    x = images(2, c=3, h=8, w=8).double().requires_grad_()
    level = DEFAULT[kind]

    def f(x):  # the same draws at every call, so the map is a fixed function of the pixels
        return Corruption(kind, level)(x, generator=gen(2))

    assert torch.autograd.gradcheck(f, (x,))
    (grad,) = torch.autograd.grad(f(x).sum(), x)
    assert grad.abs().sum() > 0
    if kind in ("translation", "cutout"):  # 1 for each pixel kept (once), 0 for one dropped
        kept = f(x.detach() + 1) != 0
        assert set(grad.unique().tolist()) <= {0.0, 1.0} and grad.sum() == kept.sum()


@pytest.mark.parametrize("kind", NEW)
def test_instance_noise_game_passes_gradient_to_fakes(kind):
    game = GAMES["instance_noise"](score=lambda v: v.flatten(1)[:, None], corruption=Corruption(kind, DEFAULT[kind]),
                                   loss=None)
    fake = images(4).requires_grad_()
    view = game.view(fake)
    assert not torch.equal(view, fake)
    view.sum().backward()
    assert fake.grad.abs().sum() > 0


# --- draws ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", NEW)
def test_same_generator_same_draws(kind):
    x = images(8, c=3)
    c = Corruption(kind, DEFAULT[kind], level_range=[0.0, DEFAULT[kind]])
    a, la = c(x, generator=gen(5), return_levels=True)
    b, lb = c(x, generator=gen(5), return_levels=True)
    assert torch.equal(a, b) and torch.equal(la, lb)
    assert not torch.equal(a, c(x, generator=gen(6)))


@pytest.mark.parametrize("kind", NEW)
def test_example_noise_draws_do_not_depend_on_the_batch(kind):
    """Evaluation draws (one generator per example): an image is corrupted the same way whichever
    batch it is in, so validation views are reproducible."""
    x = images(6)
    c = Corruption(kind, DEFAULT[kind])
    whole = c(x, generator=ExampleNoise(0, "val", torch.arange(6)))
    part = c(x[2:5], generator=ExampleNoise(0, "val", torch.arange(2, 5)))
    assert torch.equal(whole[2:5], part)


def test_training_stream_draws_follow_the_global_seed():
    x = images(4)
    c = Corruption("translation", 0.25)
    torch.manual_seed(3)
    a = c(x)
    torch.manual_seed(3)
    assert torch.equal(a, c(x))


# --- per-image levels and schedules --------------------------------------------------------------


@pytest.mark.parametrize("kind", NEW)
def test_per_image_levels_apply_per_image(kind):
    x = images(8, c=3) + 0.1
    levels = torch.tensor([0.0, DEFAULT[kind]] * 4)
    out = Corruption(kind, DEFAULT[kind])(x, level=levels, generator=gen())
    for b in range(8):
        assert torch.equal(out[b], x[b]) == (b % 2 == 0), b


def test_translation_per_image_levels_bound_each_image_shift():
    x = torch.zeros(200, 1, 28, 28)
    x[:, 0, 14, 14] = 1.0
    c = Corruption("translation", 0.0, level_range=[0.0, 0.5])
    out, levels = c(x, generator=gen(), return_levels=True)
    assert levels.std() > 0
    for o, level in zip(out, levels, strict=True):
        dy, dx = marker_shift(o[0])
        assert max(abs(dy), abs(dx)) <= math.floor(level.item() * 28 + 0.5)


def test_cutout_per_image_levels_set_each_side():
    x = images(100) + 0.1
    c = Corruption("cutout", 0.0, level_range=[0.1, 0.6])
    out, levels = c(x, generator=gen(), return_levels=True)
    for o, level in zip(out, levels, strict=True):
        rows, cols, _ = zero_box(o)
        s = math.floor(level.item() * 28 + 0.5)
        assert (s + 1) // 2 <= len(rows) <= s and (s + 1) // 2 <= len(cols) <= s


def test_linear_schedule_shrinks_the_shift_to_the_identity():
    x = torch.zeros(300, 1, 28, 28)
    x[:, 0, 14, 14] = 1.0
    c = Corruption("translation", 0.25, schedule={"kind": "linear", "images": 1000})
    c.step(500)  # level 0.125: shifts up to 4 px (7 at the start)
    shifts = torch.tensor([marker_shift(o[0]) for o in c(x, generator=gen())])
    assert shifts.abs().max() == 4
    c.step(500)
    assert c.current_level == 0.0 and torch.equal(c(x, generator=gen()), x)


# --- validation ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs,key", [
    ({"kind": "translation", "level": 1.5}, "corruption.level="),
    ({"kind": "translation", "level": -0.1}, "corruption.level="),
    ({"kind": "cutout", "level": 2}, "corruption.level="),
    ({"kind": "color", "level": 1.2}, "corruption.level="),
    ({"kind": "diffaugment", "level": -1}, "corruption.level="),
    ({"kind": "cutout", "level": 0.5, "level_range": [0.0, 1.5]}, "corruption.level_range="),
])
def test_bad_levels_refused_in_one_line(kwargs, key):
    with pytest.raises(ConfigError, match="is invalid; allowed:") as err:
        Corruption(**kwargs)
    assert str(err.value).startswith(key) and "\n" not in str(err.value)


# --- configs and a training run --------------------------------------------------------------------


def test_configs_hold_the_papers_defaults():
    for kind, level in DEFAULT.items():
        cfg = make_cfg(Path("unused"), f"corruption={kind}").corruption
        assert cfg.kind == kind and cfg.level == level and cfg.level_range is None


@pytest.mark.parametrize("kind", NEW)
def test_dcgan_instance_noise_trains_with_each_kind(smoke, tmp_path, kind):
    run = smoke(tmp_path / "run", "data=digits", "model=dcgan", "model.d_mode=instance_noise",
                f"corruption={kind}", "objective.metric=val/stat_fd", "objective.mode=min",
                "model.latent_dim=8", "trainer.max_epochs=1", "model.generator.base_channels=8",
                "model.discriminator.base_channels=8", *NO_EVAL)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "ok" and math.isfinite(summary["val/stat_fd"])
    assert list((run / "samples").glob("*_final.png"))
