"""Corruptions do what their level says, schedules move as documented, bad values fail early."""

import math
from pathlib import Path

import hydra.utils
import pytest
import torch
from conftest import make_cfg
from omegaconf import OmegaConf

from genlab.config import ConfigError
from genlab.corruption import (
    KINDS,
    AdaptiveSchedule,
    ConstantSchedule,
    Corruption,
    CosineSchedule,
    LinearSchedule,
    gaussian_kernel,
)


def corruption_config(kind: str, *overrides: str):
    """conf/corruption/<kind>.yaml as genlab-train composes it (with the shared schedule node)."""
    return make_cfg(Path("unused"), f"corruption={kind}", *overrides).corruption


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def images(b=16, c=1, h=28, w=28, seed=1):
    return torch.rand(b, c, h, w, generator=gen(seed))


def laplacian_energy(x):
    lap = 4 * x[..., 1:-1, 1:-1] - x[..., :-2, 1:-1] - x[..., 2:, 1:-1] - x[..., 1:-1, :-2] - x[..., 1:-1, 2:]
    return lap.pow(2).mean()


# --- the degradations --------------------------------------------------------------------------


def test_masking_fraction_close_to_nu():
    x = images(64) + 0.1  # strictly positive, so a zero can only come from the mask
    out = Corruption("masking", 0.25)(x, generator=gen())
    frac = (out == 0).float().mean().item()
    # 64 * 784 = 50,176 Bernoulli(0.25) draws: std 0.0019; 0.01 is over 5 std
    assert abs(frac - 0.25) < 0.01
    kept = out != 0
    assert torch.equal(out[kept], x[kept])


def test_masking_is_shared_across_channels():
    x = images(8, c=3) + 0.1
    out = Corruption("masking", 0.5)(x, generator=gen())
    zero = out == 0
    assert torch.equal(zero[:, 0], zero[:, 1]) and torch.equal(zero[:, 0], zero[:, 2])


def test_gaussian_noise_std_close_to_sigma():
    x = images(64)
    out = Corruption("gaussian", 0.1)(x, generator=gen())
    noise = out - x
    # 50,176 normal draws: the std estimate has relative std 1/sqrt(2n) = 0.3%; 2% is ~6 std
    assert abs(noise.std().item() - 0.1) / 0.1 < 0.02
    assert abs(noise.mean().item()) < 0.003  # std of the mean: 0.1 / sqrt(50,176) = 0.00045
    assert out.min() < 0  # clip=False leaves the noise unclamped, so its std is exact


def test_gaussian_clip_stays_in_range():
    out = Corruption("gaussian", 0.3, clip=True)(images(), generator=gen())
    assert out.min() >= 0 and out.max() <= 1


def test_salt_pepper_fraction_and_even_split():
    x = 0.25 + 0.5 * images(64)  # in [0.25, 0.75]: a 0 or a 1 can only be noise
    out = Corruption("salt_pepper", 0.2)(x, generator=gen())
    n = out.numel()
    pepper, salt = (out == 0).sum().item() / n, (out == 1).sum().item() / n
    # each fraction is Bernoulli(0.1) over 50,176 pixels: std 0.0013; 0.01 is over 7 std
    assert abs(pepper + salt - 0.2) < 0.01
    assert abs(pepper - 0.1) < 0.01 and abs(salt - 0.1) < 0.01
    untouched = (out != 0) & (out != 1)
    assert torch.equal(out[untouched], x[untouched])


def test_blur_sigma_zero_is_exact_identity():
    x = images()
    assert torch.equal(Corruption("blur", 0.0)(x), x)
    # per image too: an image given sigma 0 in a batch with others blurred stays bit-identical
    out = Corruption("blur", 2.0)(x, level=torch.tensor([0.0, 2.0] * 8))
    assert torch.equal(out[0::2], x[0::2])
    assert not torch.equal(out[1::2], x[1::2])


def test_blur_of_a_batch_is_each_image_blurred_alone():
    """Per-image sigmas drawn from level_range: the kernel size comes from the range's top (a
    number on the host, so no device sync), and each image comes out as if blurred on its own:
    exactly at the same kernel size, and up to the kernels' 3-sigma cut at its own."""
    x = images()
    c = Corruption("blur", 1.0, level_range=[0.3, 1.5])
    out, levels = c(x, generator=gen(), return_levels=True)
    assert c.level_bound() == 1.5 and levels.max() <= 1.5
    same_size = torch.cat([c(x[i : i + 1], level=levels[i : i + 1]) for i in range(len(x))])
    assert torch.equal(out, same_size)
    own_size = torch.cat([Corruption("blur", float(s))(x[i : i + 1]) for i, s in enumerate(levels)])
    assert torch.allclose(out, own_size, atol=1e-3)


def test_blur_kernel_sums_to_one():
    k = gaussian_kernel(torch.tensor([0.0, 0.5, 1.0, 3.0]), radius=9)
    assert torch.allclose(k.sum(1), torch.ones(4), atol=1e-6)
    assert k[0, 9] == 1 and k[0].count_nonzero() == 1  # sigma 0: the unit impulse
    assert torch.allclose(k, k.flip(1))  # symmetric: no shift of the image


def test_blur_keeps_constant_image_and_reduces_high_frequencies():
    const = torch.full((2, 1, 28, 28), 0.37)
    out = Corruption("blur", 2.0)(const)
    assert torch.allclose(out, const, atol=1e-6)  # kernel sums to 1, reflect padding: still 0.37
    x = images()
    blurred = Corruption("blur", 1.0)(x)
    assert laplacian_energy(blurred) < 0.2 * laplacian_energy(x)  # white noise loses most of it
    assert abs(blurred.mean() - x.mean()) < 0.01


def test_rotate_crop_keeps_histogram_exactly_and_changes_image():
    x = images(16)
    out = Corruption("rotate_crop", 90.0)(x, generator=gen())
    assert torch.equal(x.flatten(1).sort(1).values, out.flatten(1).sort(1).values)
    changed = (out != x).flatten(1).float().mean(1)
    # a disc of radius 0.3 * 28 = 8.4 px holds ~220 of 784 pixels; rotating it moves most of them
    assert (changed > 0.15).all()
    # pixels outside the disc are untouched: at most the disc's pixels can change
    assert (changed < 225 / 784).all()


def test_rotate_crop_by_90_degrees_is_a_true_rotation_of_the_disc():
    # a 9x9 image whose disc (radius 4 px) is the whole inscribed circle, centre fixed at (4, 4)
    x = torch.arange(81.0).view(1, 1, 9, 9) / 81
    out = Corruption("rotate_crop", 90.0, radius=0.5)(x, generator=gen())
    turned = [torch.rot90(x, k, dims=(2, 3)) for k in (1, -1)]
    yy, xx = torch.meshgrid(torch.arange(9.0), torch.arange(9.0), indexing="ij")
    disc = ((yy - 4) ** 2 + (xx - 4) ** 2).sqrt() <= 4
    assert any(torch.equal(out[0, 0][disc], t[0, 0][disc]) for t in turned)
    assert torch.equal(out[0, 0][~disc], x[0, 0][~disc])


def test_rotate_crop_angle_zero_is_identity():
    x = images(4)
    assert torch.equal(Corruption("rotate_crop", 0.0)(x, generator=gen()), x)


def test_none_is_identity():
    x = images(4)
    out, levels = Corruption("none")(x, return_levels=True)
    assert torch.equal(out, x) and torch.equal(levels, torch.zeros(4))


@pytest.mark.parametrize("kind,level_range", [("gaussian", (0.0, 0.3)), ("masking", (0.0, 0.6)),
                                              ("salt_pepper", (0.0, 0.4)), ("blur", (0.0, 2.0)),
                                              ("rotate_crop", (0.0, 180.0))])
def test_per_image_levels_in_range_and_larger_means_more_degraded(kind, level_range):
    x = images(32)
    if kind == "rotate_crop":  # on white noise any turn scrambles the disc; a ramp shows the angle
        x = torch.linspace(0, 1, 28).expand(32, 1, 28, 28).contiguous()
    out, levels = Corruption(kind, 0.0, level_range=level_range)(x, generator=gen(), return_levels=True)
    assert levels.shape == (32,)
    assert (levels >= level_range[0]).all() and (levels <= level_range[1]).all()
    assert levels.std() > 0  # drawn per image, not one value for the batch
    damage = (out - x).pow(2).flatten(1).mean(1)
    order = levels.argsort()
    low, high = damage[order[:10]].mean(), damage[order[-10:]].mean()
    assert high > 1.5 * low


def test_same_generator_same_result():
    x = images(4)
    c = Corruption("salt_pepper", 0.3, level_range=[0.1, 0.5])
    a, la = c(x, generator=gen(5), return_levels=True)
    b, lb = c(x, generator=gen(5), return_levels=True)
    assert torch.equal(a, b) and torch.equal(la, lb)


@pytest.mark.parametrize("kind", ["gaussian", "masking", "blur"])
def test_differentiable_where_natural(kind):
    x = images(2).requires_grad_()
    Corruption(kind, 0.5)(x, generator=gen()).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


# --- schedules -----------------------------------------------------------------------------


def test_constant_schedule():
    s = ConstantSchedule(0.3)
    assert s.value(0) == s.value(10**9) == 0.3


def test_linear_schedule():
    s = LinearSchedule(2.0, 100_000)
    assert s.value(0) == 2.0
    assert math.isclose(s.value(50_000), 1.0)
    assert s.value(100_000) == 0.0 and s.value(300_000) == 0.0


def test_cosine_schedule():
    s = CosineSchedule(2.0, 100_000)
    assert s.value(0) == 2.0
    assert math.isclose(s.value(50_000), 1.0)
    assert s.value(25_000) > LinearSchedule(2.0, 100_000).value(25_000)  # flatter at the start
    assert s.value(100_000) == 0.0 and s.value(300_000) == 0.0


def test_adaptive_schedule_moves_with_accuracy_and_stays_in_bounds():
    s = AdaptiveSchedule(1.0, target=0.6, step=0.3)
    assert s.value(0) == 0.0
    s.update(0.9)
    assert math.isclose(s.value(0), 0.3)
    for _ in range(10):
        s.update(0.9)
    assert s.value(0) == 1.0  # clamped at max
    s.update(0.4)
    assert math.isclose(s.value(0), 0.7)
    for _ in range(10):
        s.update(0.4)
    assert s.value(0) == 0.0  # clamped at 0
    s.update(0.6)
    assert s.value(0) == 0.0  # at target: no move


def test_corruption_follows_its_schedule():
    c = Corruption("blur", 2.0, schedule={"kind": "linear", "images": 1000})
    assert c.current_level == 2.0
    c.step(500)
    assert math.isclose(c.current_level, 1.0)
    _, levels = c(images(3), return_levels=True)
    assert torch.allclose(levels, torch.full((3,), 1.0))
    c.step(600)
    assert c.current_level == 0.0
    assert torch.equal(c(images(3)), images(3))


def test_state_dict_round_trip_resumes_schedule():
    a = Corruption("gaussian", 0.2, schedule={"kind": "adaptive", "step": 0.05})
    for _ in range(3):
        a.update(0.8)
    a.step(1234)
    b = Corruption("gaussian", 0.2, schedule={"kind": "adaptive", "step": 0.05})
    b.load_state_dict(a.state_dict())
    assert b.images_seen == 1234 and math.isclose(b.current_level, 0.15)
    lin = Corruption("blur", 2.0, schedule={"kind": "cosine", "images": 1000})
    lin.step(400)
    other = Corruption("blur", 2.0, schedule={"kind": "cosine", "images": 1000})
    other.load_state_dict(lin.state_dict())
    assert other.current_level == lin.current_level < 2.0


# --- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs,key", [
    ({"kind": "gaussian", "level": -0.1}, "corruption.level="),
    ({"kind": "blur", "level": -1.0}, "corruption.level="),
    ({"kind": "masking", "level": 1.5}, "corruption.level="),
    ({"kind": "salt_pepper", "level": -0.1}, "corruption.level="),
    ({"kind": "rotate_crop", "level": 270.0}, "corruption.level="),
    ({"kind": "jpeg", "level": 0.1}, "corruption.kind="),
    ({"kind": "blur", "level": 1.0, "schedule": {"kind": "exponential"}}, "corruption.schedule.kind="),
    ({"kind": "blur", "level": 1.0, "schedule": {"kind": "linear", "images": 0}}, "corruption.schedule.images="),
    ({"kind": "blur", "level": 1.0, "schedule": {"kind": "adaptive", "target": 1.5}}, "corruption.schedule.target="),
    ({"kind": "masking", "level": 0.1, "level_range": [0.5, 0.1]}, "corruption.level_range="),
    ({"kind": "masking", "level": 0.1, "level_range": [0.0, 1.2]}, "corruption.level_range="),
    ({"kind": "masking", "level": 0.1, "level_range": [0.0, 0.5], "schedule": {"kind": "linear"}},
     "corruption.level_range="),
    ({"kind": "rotate_crop", "level": 90.0, "radius": 0.8}, "corruption.radius="),
])
def test_bad_values_raise_config_error_naming_the_key(kwargs, key):
    with pytest.raises(ConfigError, match="is invalid; allowed:") as err:
        Corruption(**kwargs)
    assert str(err.value).startswith(key)


# --- Hydra configs (their names are a contract) --------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_hydra_config_instantiates(kind):
    cfg = corruption_config(kind)
    c = hydra.utils.instantiate(cfg)
    assert isinstance(c, Corruption) and c.kind == kind
    out = c(images(2), generator=gen())
    assert out.shape == (2, 1, 28, 28)


def test_hydra_config_schedule_override():
    cfg = corruption_config("blur", "corruption.level=2.0", "corruption.schedule.kind=linear")
    c = hydra.utils.instantiate(cfg)
    c.step(cfg.schedule.images // 2)
    assert math.isclose(c.current_level, 1.0)


def test_hydra_config_defaults_for_28x28():
    levels = {k: corruption_config(k).level for k in KINDS if k != "none"}
    assert levels == {"gaussian": 0.1, "masking": 0.25, "salt_pepper": 0.1, "blur": 1.0, "rotate_crop": 90.0,
                      "translation": 0.125, "cutout": 0.5, "color": 1.0, "diffaugment": 1.0}
    assert corruption_config("rotate_crop").radius == 0.3


def test_every_corruption_shares_one_schedule_node():
    """conf/corruption/schedule/default.yaml, the block each corruption file once repeated."""
    for kind in KINDS:
        cfg = corruption_config(kind)
        assert OmegaConf.to_container(cfg.schedule) == {"kind": "constant", "images": 100000,
                                                         "target": 0.6, "step": None}, kind
        c = hydra.utils.instantiate(cfg)
        assert isinstance(c.schedule, ConstantSchedule)
        assert c.current_level == (0.0 if kind == "none" else cfg.level)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("level_range", [None, [0.5, 2.0]])
def test_blur_never_waits_for_the_device(level_range):
    """A training step's blur (drawn or scheduled levels, or levels passed back as a tensor)
    queues its kernels without a host sync."""
    x = images(8).cuda()
    c = Corruption("blur", 1.0, level_range=level_range, schedule=None if level_range else
                   {"kind": "linear", "images": 1000})
    c.step(100)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out, levels = c(x, return_levels=True)
        again = c(out, level=levels)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert again.shape == x.shape


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind", KINDS)
def test_runs_on_cuda(kind):
    x = images(4).cuda()
    c = Corruption(kind, 0.0, level_range=[0.0, {"masking": 0.5, "salt_pepper": 0.5, "rotate_crop": 90.0}.get(kind, 1.0)])
    out, levels = c(x, return_levels=True)
    assert out.device == x.device and levels.device == x.device
    # a CPU generator gives the same result on either device
    cpu = c(x.cpu(), generator=gen(3))
    assert torch.allclose(c(x, generator=gen(3)).cpu(), cpu, atol=1e-6)
