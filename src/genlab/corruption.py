"""Corruptions: degradations of image batches, with a level that can follow a schedule.

One object, `Corruption`, serves every place where genlab degrades images on purpose: the inputs of
a denoising auto-encoder, what a discriminator sees (instance noise, blur, a "degraded real"
class) and the targets of a noise-level head. Images are float tensors in [0, 1] of shape
[B, C, H, W], on any device; every kind is batched, with no per-image Python (except the draws
of an evaluation's genlab.seeding.ExampleNoise, one call per image).

What the level means, per kind (units are stated here and nowhere else):

    none         ignored; the identity
    gaussian     sigma: std of additive N(0, sigma^2) pixel noise, in image units (the [0, 1] scale)
    masking      nu in [0, 1]: probability that a pixel (all its channels) is set to 0
    salt_pepper  nu in [0, 1]: probability that a pixel is replaced, half by 0 and half by 1
    blur         sigma of a Gaussian blur, in pixels
    rotate_crop  angle in degrees [0, 180] by which a random disc is rotated (sign random per image)
    translation  fraction of the image side in [0, 1]: each image shifted by whole pixels, up to
                 round(level * side) along each axis, zeros coming in (DiffAugment: 0.125)
    cutout       fraction of the image side in [0, 1]: a square of side round(level * side) set to
                 0 at a random place, its centre in the image (DiffAugment: 0.5)
    color        strength in [0, 1] of DiffAugment's random brightness, saturation and contrast
                 (1: the paper's ranges); saturation does nothing to 1-channel (grey) images
    diffaugment  strength in [0, 1] of DiffAugment's policy color,translation,cutout in sequence:
                 color at level, translation at level / 8, cutout at level / 2 (1: the paper's)

Each kind is one registered entry of CORRUPTIONS (a `Kind` subclass: its level's rule and its
degradation), and each schedule one of SCHEDULE_KINDS, so adding either is one registered class.

gaussian, masking, blur and color are differentiable in the image (an add, a multiply, a weighted
sum), so a corruption can sit between a generator and a discriminator; salt_pepper, rotate_crop,
translation and cutout pass gradients to the pixels they keep or move (translation, cutout, color
and diffaugment are DiffAugment's, Zhao et al. 2020, made for exactly that place: the
instance_noise game applies them to real and fake alike, with G's gradient through them).

The level is fixed, drawn per image from `level_range`, or follows a schedule over the number of
training images seen (`step(n_images)` advances it): constant, linear or cosine decay to 0, or
adaptive (ADA, Karras et al. 2020: `update(real_sign_accuracy)` after each discriminator check).
Validation follows genlab.config: a bad value raises ConfigError naming the key as typed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from genlab.config import ConfigError, require, require_positive
from genlab.registry import Registry
from genlab.seeding import ExampleNoise, draw

__all__ = [
    "CORRUPTIONS",
    "KINDS",
    "SCHEDULES",
    "AdaptiveSchedule",
    "ConfigError",
    "ConstantSchedule",
    "CosineSchedule",
    "Corruption",
    "Kind",
    "LinearSchedule",
    "Schedule",
    "check_level",
    "gaussian_kernel",
    "make_schedule",
]

# A kind is one registered Kind subclass (its level's rule and its degradation); a schedule one
# registered Schedule subclass (built from its config by `from_config`). Registration order is the
# order the error messages list them in.
CORRUPTIONS: Registry[type[Kind]] = Registry("corruption kind", "corruption.kind")
SCHEDULE_KINDS: Registry[type[Schedule]] = Registry("corruption schedule", "corruption.schedule.kind")


def _is_number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def check_level(kind: str, level, key: str) -> None:
    """Raise ConfigError unless `level` is a valid level for `kind` (see the module docstring)."""
    CORRUPTIONS[kind].check_level(level, key)


# --- schedules ---------------------------------------------------------------------------------
# A schedule maps the number of training images seen to a level. The Corruption counts the images;
# only the adaptive schedule has state of its own (its level), which it saves and restores.


class Schedule:
    """Level as a function of images seen. `update` is feedback that only `adaptive` uses.
    A subclass registered in SCHEDULE_KINDS is built by `from_config` and gives its config back
    with `config`."""

    registry_name = ""

    @classmethod
    def from_config(cls, spec: Mapping, level: float, key: str) -> Schedule:
        """The schedule from its config mapping (`key`: its config path, for errors)."""
        raise NotImplementedError

    def config(self) -> dict:
        """The mapping `from_config` rebuilds it from (what a checkpoint stores)."""
        return {"kind": self.registry_name}

    def value(self, images: int) -> float:
        raise NotImplementedError

    def update(self, real_sign_accuracy: float) -> None:
        """Discriminator feedback; ignored by every schedule except adaptive, so a model may always call it."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


@SCHEDULE_KINDS.register("constant")
class ConstantSchedule(Schedule):
    def __init__(self, level: float):
        self.level = float(level)

    @classmethod
    def from_config(cls, spec: Mapping, level: float, key: str) -> Schedule:
        return cls(level)

    def value(self, images: int) -> float:
        return self.level

    def __repr__(self) -> str:
        return f"constant({self.level})"


class _Decay(Schedule):
    """`start` at 0 images, down to 0 at `images` images (config key `images`, default 100k)."""

    def __init__(self, start: float, images: float):
        self.start, self.images = float(start), float(images)

    @classmethod
    def from_config(cls, spec: Mapping, level: float, key: str) -> Schedule:
        images = spec.get("images", 100_000)
        require_positive(images, f"{key}.images")
        return cls(level, images)

    def config(self) -> dict:
        return {"kind": self.registry_name, "images": self.images}


@SCHEDULE_KINDS.register("linear")
class LinearSchedule(_Decay):
    """`start` at 0 images, falling linearly to 0 at `images` images, 0 afterwards.

    StyleGAN3 blurs discriminator inputs with sigma 10 px fading to 0 over the first 200k images
    of 256-1024 px images. For 28x28 images genlab suggests sigma 2 px over 100k images: 2 px
    still erases strokes a few pixels wide (as 10 px does at 256 px), and 100k images is about
    two Fashion-MNIST epochs, early training, as in StyleGAN3.
    """

    def value(self, images: int) -> float:
        return self.start * max(0.0, 1.0 - images / self.images)

    def __repr__(self) -> str:
        return f"linear({self.start} -> 0 over {self.images:g} images)"


@SCHEDULE_KINDS.register("cosine")
class CosineSchedule(_Decay):
    """`start` at 0 images, half a cosine period down to 0 at `images` images, 0 afterwards.

    Flatter than linear at both ends: the level stays near `start` longer, then lands softly.
    """

    def value(self, images: int) -> float:
        t = min(1.0, images / self.images)
        return self.start * 0.5 * (1.0 + math.cos(math.pi * t))

    def __repr__(self) -> str:
        return f"cosine({self.start} -> 0 over {self.images:g} images)"


@SCHEDULE_KINDS.register("adaptive")
class AdaptiveSchedule(Schedule):
    """ADA's controller (Karras et al. 2020) acting on the level, which starts at 0 as ADA's p does.

    The discriminator's sign accuracy on real images, E[sign(D(x_real)) > 0], measures overfitting:
    above `target` (ADA: 0.6) the level rises by `step`, below it falls by `step`, and it is
    clamped to [0, max_level]. `step` is in level units; None means max_level / 100, so a
    hundred updates take the level from 0 to its ceiling.
    """

    def __init__(self, max_level: float, target: float = 0.6, step: float | None = None):
        self.max_level = float(max_level)
        self.target = float(target)
        self.step = self.max_level / 100.0 if step is None else float(step)
        self.level = 0.0

    @classmethod
    def from_config(cls, spec: Mapping, level: float, key: str) -> Schedule:
        target, step = spec.get("target", 0.6), spec.get("step")
        require(_is_number(target) and 0 < target < 1, f"{key}.target", "a number in (0, 1)", target)
        require(step is None or (_is_number(step) and step > 0), f"{key}.step",
                "null (= level / 100) or a number > 0", step)
        return cls(level, target, step)

    def config(self) -> dict:
        # null step means level / 100; store null then, so level 0 (step 0) still rebuilds
        step = None if math.isclose(self.step, self.max_level / 100.0) else self.step
        return {"kind": "adaptive", "target": self.target, "step": step}

    def value(self, images: int) -> float:
        return self.level

    def update(self, real_sign_accuracy: float) -> None:
        acc = float(real_sign_accuracy)
        if acc > self.target:
            self.level = min(self.max_level, self.level + self.step)
        elif acc < self.target:
            self.level = max(0.0, self.level - self.step)

    def state_dict(self) -> dict:
        return {"level": self.level}

    def load_state_dict(self, state: dict) -> None:
        self.level = float(state["level"])

    def __repr__(self) -> str:
        return f"adaptive(level={self.level:g}, max={self.max_level:g}, target={self.target:g}, step={self.step:g})"


def make_schedule(spec, level: float, key: str = "corruption.schedule") -> Schedule:
    """Build a schedule from its config, e.g. {kind: linear, images: 100000}.

    `level` is the corruption's level: the constant value, the start of linear and cosine decay,
    and the ceiling of adaptive. Fields a kind does not use are ignored, so one config block can
    list them all (which lets the command line override any of them without a `+`).
    """
    if isinstance(spec, Schedule):
        return spec
    if spec is None:
        spec = {"kind": "constant"}
    require(isinstance(spec, Mapping), key, "a mapping such as {kind: constant}", spec)
    kind = SCHEDULE_KINDS.get(spec.get("kind", "constant"), f"{key}.kind")
    return kind.from_config(spec, level, key)


SCHEDULES = tuple(SCHEDULE_KINDS)  # the built-in schedule kinds


# --- the degradations, each (x [B,C,H,W], levels [B], generator) -> x_degraded -----------------


def _rand(shape, like: Tensor, generator: torch.Generator | ExampleNoise | None,
          normal: bool = False) -> Tensor:
    """Uniform [0, 1) or standard normal draws shaped `shape` ([B, ...]), on like's device and
    dtype, from `generator` as genlab.seeding.draw takes it: the device's global RNG (None), a
    torch.Generator on its own device, or one generator per image (evaluations)."""
    return draw(shape, generator, normal=normal, dtype=like.dtype, device=like.device)


def _gaussian(x: Tensor, sigma: Tensor, generator, clip: bool) -> Tensor:
    out = x + sigma.view(-1, 1, 1, 1) * _rand(x.shape, x, generator, normal=True)
    return out.clamp(0.0, 1.0) if clip else out


def _masking(x: Tensor, nu: Tensor, generator) -> Tensor:
    b, _, h, w = x.shape
    u = _rand((b, 1, h, w), x, generator)  # one draw per pixel, shared by its channels
    return x * (u >= nu.view(-1, 1, 1, 1)).to(x.dtype)


def _salt_pepper(x: Tensor, nu: Tensor, generator) -> Tensor:
    b, _, h, w = x.shape
    u = _rand((b, 1, h, w), x, generator)
    nu = nu.view(-1, 1, 1, 1)
    pepper = u < nu / 2  # P = nu / 2 each, disjoint
    salt = (u >= nu / 2) & (u < nu)
    return torch.where(pepper, 0.0, torch.where(salt, 1.0, x))


def gaussian_kernel(sigma: Tensor, radius: int) -> Tensor:
    """Normalised 1-D Gaussian kernels [B, 2*radius+1] for sigmas [B] in pixels.

    sigma = 0 gives the unit impulse (exp(-t^2 / 2 sigma^2) underflows to exactly 0 for t != 0).
    Each row sums to 1, so a constant image stays constant (and its mean is preserved).
    """
    t = torch.arange(-radius, radius + 1, device=sigma.device, dtype=sigma.dtype)
    s = sigma.clamp_min(1e-6).view(-1, 1)
    k = torch.exp(-(t**2) / (2 * s**2))
    return k / k.sum(dim=1, keepdim=True)


def _blur(x: Tensor, sigma: Tensor, bound: float) -> Tensor:
    """Separable Gaussian blur with reflect padding; per-image sigma [B] in pixels, at most `bound`.

    `bound` is a number the caller knows on the host (Corruption.forward: the level given, the top
    of level_range or the scheduled level), so the kernel size never waits for the device.
    Written as a weighted sum of shifted copies rather than a convolution: kernels differ per
    image, the kernels are short, and elementwise arithmetic is exact where a zero weight is
    involved (cuDNN may use TF32), so sigma = 0 is exactly the identity on every device.
    """
    b, c, h, w = x.shape
    if bound == 0.0:
        return x.clone()
    # ~3 sigma covers 99.7% of the mass; reflect padding needs pad < size, so tiny images truncate
    # the kernel (renormalised by gaussian_kernel to sum 1), as does a sigma above `bound`.
    radius = min(math.ceil(3 * bound), h - 1, w - 1)
    if radius == 0:
        return x.clone()
    k = gaussian_kernel(sigma.to(x.dtype), radius)  # [B, K]
    n = 2 * radius + 1
    pad = torch.nn.functional.pad(x, (radius, radius, 0, 0), mode="reflect")
    out = sum(k[:, i].view(-1, 1, 1, 1) * pad[..., :, i : i + w] for i in range(n))
    pad = torch.nn.functional.pad(out, (0, 0, radius, radius), mode="reflect")
    return sum(k[:, i].view(-1, 1, 1, 1) * pad[..., i : i + h, :] for i in range(n))


_RING_CACHE: dict[tuple[float, str], tuple[Tensor, ...]] = {}


def _ring_layout(r_px: float, device: torch.device) -> tuple[Tensor, ...]:
    """Pixels of a disc of radius r_px around an integer centre, grouped into rings.

    Returns (dy, dx, start, size, pos), each [P]: offsets from the centre, and for each pixel the
    index of its ring's first pixel, its ring's length and its position along the ring. Rings are
    round(distance) = 0, 1, 2, ...; within a ring pixels are ordered by angle. Every ring is
    symmetric under 90-degree turns of the integer grid, so a cyclic shift by a quarter of the
    ring is an exact 90-degree rotation, and other angles are within about a pixel of one.
    """
    cache_key = (r_px, str(device))
    if cache_key not in _RING_CACHE:
        m = int(math.floor(r_px))
        grid = torch.arange(-m, m + 1, dtype=torch.float64)
        dy, dx = torch.meshgrid(grid, grid, indexing="ij")
        dist = torch.sqrt(dy**2 + dx**2)
        inside = dist <= r_px
        dy, dx, dist = dy[inside], dx[inside], dist[inside]
        ring = dist.round()
        angle = (torch.atan2(dy, dx) + math.pi) / (2 * math.pi)  # [0, 1]
        order = torch.argsort(ring + 0.999 * angle)  # by ring, then by angle within it
        dy, dx, ring = dy[order].long(), dx[order].long(), ring[order].long()
        size_of = torch.bincount(ring)
        start_of = torch.cumsum(size_of, 0) - size_of
        start, size = start_of[ring], size_of[ring]
        pos = torch.arange(len(ring)) - start
        _RING_CACHE[cache_key] = tuple(t.to(device) for t in (dy, dx, start, size, pos))
    return _RING_CACHE[cache_key]


def _rotate_crop(x: Tensor, angle: Tensor, generator, radius: float) -> Tensor:
    """Rotate a random disc of each image by +-angle degrees, by permuting its pixels.

    A nearest-neighbour rotation of a grid is not a bijection (some pixels are copied twice,
    others dropped), which would change the histogram. Shifting each ring of the disc cyclically
    by round(angle / 360 * ring length) positions is an exact permutation, so every image keeps
    its multiset of pixel values, and it rotates the content up to about a pixel. The disc lies
    inside the image (radius is clamped to fit), so no pixel comes from outside it.
    """
    b, c, h, w = x.shape
    r_px = min(radius * min(h, w), (min(h, w) - 1) / 2)
    dy, dx, start, size, pos = _ring_layout(r_px, x.device)
    m = int(math.floor(r_px))
    # integer centres with the whole disc inside the image
    cy = m + (_rand((b,), x, generator) * (h - 2 * m)).long().clamp_max(h - 2 * m - 1)
    cx = m + (_rand((b,), x, generator) * (w - 2 * m)).long().clamp_max(w - 2 * m - 1)
    sign = torch.where(_rand((b,), x, generator) < 0.5, -1.0, 1.0)
    shift = torch.round((sign * angle).view(-1, 1).double() / 360.0 * size.double()).long()  # [B, P]
    src = start + torch.remainder(pos - shift, size)  # the pixel each target takes its value from
    target = (cy.view(-1, 1) + dy) * w + (cx.view(-1, 1) + dx)  # flat index, [B, P]
    source = (cy.view(-1, 1) + dy[src]) * w + (cx.view(-1, 1) + dx[src])
    flat = x.reshape(b, c, h * w)
    moved = flat.gather(2, source.unsqueeze(1).expand(b, c, -1))
    return flat.scatter(2, target.unsqueeze(1).expand(b, c, -1), moved).view(b, c, h, w)


# DiffAugment (Zhao et al. 2020): augmentations applied to real and fake images alike on the way to
# D, differentiable in the image so that G's loss back-propagates through them. Integer shifts and
# masks are gathers and products: their gradient w.r.t. the pixel values is exact (1 for a pixel
# moved or kept, 0 for one dropped or cut); no gradient w.r.t. the level or the draws is needed.


def _side_px(levels: Tensor, size: int) -> Tensor:
    """round(level * size) per image (half up, as DiffAugment's int(size * ratio + 0.5)), [B] long."""
    return torch.floor(levels.float() * size + 0.5).long()


def _uniform_int(u: Tensor, n: Tensor) -> Tensor:
    """Integers uniform in {0, ..., n - 1} from uniform [0, 1) draws u (n >= 1, per element)."""
    return torch.minimum((u.float() * n).long(), n - 1)


def _translation(x: Tensor, fraction: Tensor, generator) -> Tensor:
    """Shift each image by integers (dy, dx), each uniform in {-s, ..., s} with s = round(fraction
    * side) of its own axis, zeros filling what comes in from outside (DiffAugment's translation;
    its default fraction is 1/8). out[i, j] = x[i - dy, j - dx]: content moves down by dy, right
    by dx."""
    b, c, h, w = x.shape
    u = _rand((b, 2), x, generator)  # one draw per axis per image, whatever the level
    sh, sw = _side_px(fraction, h), _side_px(fraction, w)
    dy = _uniform_int(u[:, 0], 2 * sh + 1) - sh
    dx = _uniform_int(u[:, 1], 2 * sw + 1) - sw
    rows = torch.arange(h, device=x.device).view(1, h, 1) - dy.view(-1, 1, 1)  # source row [B, H, 1]
    cols = torch.arange(w, device=x.device).view(1, 1, w) - dx.view(-1, 1, 1)  # source col [B, 1, W]
    inside = ((rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)).view(b, 1, h * w)
    source = (rows.clamp(0, h - 1) * w + cols.clamp(0, w - 1)).view(b, 1, h * w)
    moved = x.reshape(b, c, h * w).gather(2, source.expand(b, c, -1))
    return torch.where(inside, moved, torch.zeros((), dtype=x.dtype, device=x.device)).view(b, c, h, w)


def _cutout(x: Tensor, fraction: Tensor, generator) -> Tensor:
    """Set to 0 a square (all channels) of side s = round(fraction * side) per axis, at a random
    place per image (DiffAugment's cutout; its default fraction is 1/2). As in DiffAugment the
    square's first row is uniform in {-(s // 2), ..., H - s + s // 2} (likewise its first column):
    its centre lies anywhere in the image, so up to half of it may fall outside and be lost."""
    b, _, h, w = x.shape
    u = _rand((b, 2), x, generator)
    sh, sw = _side_px(fraction, h), _side_px(fraction, w)
    top = _uniform_int(u[:, 0], h + 1 - sh % 2) - sh // 2
    left = _uniform_int(u[:, 1], w + 1 - sw % 2) - sw // 2
    rows = torch.arange(h, device=x.device).view(1, h, 1) - top.view(-1, 1, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w) - left.view(-1, 1, 1)
    cut = (rows >= 0) & (rows < sh.view(-1, 1, 1)) & (cols >= 0) & (cols < sw.view(-1, 1, 1))
    return x * (~cut).unsqueeze(1).to(x.dtype)


def _color(x: Tensor, strength: Tensor, generator) -> Tensor:
    """DiffAugment's colour policy in sequence, each factor drawn per image, scaled by strength t
    in [0, 1] (t = 1: the paper's ranges; t = 0: the identity):
        brightness  x + t * (u - 1/2) / 2      (the paper's U(-0.5, 0.5) on [-1, 1] images)
        saturation  m_c + (x - m_c) * (1 + t * (2u - 1)), m_c = the mean over channels (paper: U(0, 2))
        contrast    m + (x - m) * (1 + t * (u - 1/2)), m = the image's mean (paper: U(0.5, 1.5))
    Unclamped, as in the paper. On 1-channel (grey) images x = m_c, so saturation changes
    nothing (its draw is still made, so a grey and a colour batch use the stream alike)."""
    t = strength.view(-1, 1, 1, 1).to(x.dtype)
    u = _rand((x.shape[0], 3), x, generator).view(-1, 3, 1, 1)
    # written as x + (x - m) * (factor - 1): t = 0 adds exact zeros, so level 0 is exactly x
    x = x + t * (u[:, 0:1] - 0.5) / 2
    m = x.mean(dim=1, keepdim=True)  # one channel: m is x exactly, x - m is 0, x comes back as is
    x = x + (x - m) * (t * (2 * u[:, 1:2] - 1))
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    return x + (x - m) * (t * (u[:, 2:3] - 0.5))


# --- the kinds: each one registered entry --------------------------------------------------------


class Kind:
    """One corruption kind, registered in CORRUPTIONS under its `corruption.kind` name: the rule
    its level must meet and its degradation of a batch. `levelled` is False for a kind that
    ignores the level (none: its level is 0 and it draws no levels)."""

    registry_name = ""
    levelled = True

    @staticmethod
    def check_level(level, key: str) -> None:
        require(_is_number(level) and level >= 0, key, "a number >= 0", level)

    @staticmethod
    def degrade(x: Tensor, levels: Tensor, generator, corruption: Corruption, bound: float) -> Tensor:
        """x [B, C, H, W] degraded at per-image `levels` [B], drawing from `generator` (see _rand);
        `bound` is the largest level, known on the host (Corruption.level_bound)."""
        raise NotImplementedError


@CORRUPTIONS.register("none")
class _None(Kind):
    levelled = False

    @staticmethod
    def check_level(level, key: str) -> None:
        require(_is_number(level), key, "a number (ignored by kind=none)", level)

    @staticmethod
    def degrade(x, levels, generator, corruption, bound):
        return x


@CORRUPTIONS.register("gaussian")
class _Gaussian(Kind):
    @staticmethod
    def degrade(x, levels, generator, corruption, bound):
        return _gaussian(x, levels, generator, corruption.clip)


class _UnitLevel(Kind):
    """A kind whose level lies in [0, 1]; `allowed` says what it is, for the error message."""

    allowed = "a number in [0, 1]"

    @classmethod
    def check_level(cls, level, key: str) -> None:
        require(_is_number(level) and 0 <= level <= 1, key, cls.allowed, level)


class _Probability(_UnitLevel):
    pass


@CORRUPTIONS.register("masking")
class _Masking(_Probability):
    @staticmethod
    def degrade(x, levels, generator, corruption, bound):
        return _masking(x, levels, generator)


@CORRUPTIONS.register("salt_pepper")
class _SaltPepper(_Probability):
    @staticmethod
    def degrade(x, levels, generator, corruption, bound):
        return _salt_pepper(x, levels, generator)


@CORRUPTIONS.register("blur")
class _Blur(Kind):
    @staticmethod
    def degrade(x, levels, generator, corruption, bound):
        return _blur(x, levels, bound)


@CORRUPTIONS.register("rotate_crop")
class _RotateCrop(Kind):
    @staticmethod
    def check_level(level, key: str) -> None:
        require(_is_number(level) and 0 <= level <= 180, key, "an angle in degrees in [0, 180]", level)

    @staticmethod
    def degrade(x, levels, generator, corruption, bound):
        return _rotate_crop(x, levels, generator, corruption.radius)


class _Fraction(_UnitLevel):
    allowed = "a fraction of the image side in [0, 1]"


@CORRUPTIONS.register("translation")
class _Translation(_Fraction):
    @staticmethod
    def degrade(x, levels, generator, corruption, bound):
        return _translation(x, levels, generator)


@CORRUPTIONS.register("cutout")
class _Cutout(_Fraction):
    @staticmethod
    def degrade(x, levels, generator, corruption, bound):
        return _cutout(x, levels, generator)


@CORRUPTIONS.register("color")
class _Color(_UnitLevel):
    allowed = "a strength in [0, 1]"

    @staticmethod
    def degrade(x, levels, generator, corruption, bound):
        return _color(x, levels, generator)


# DiffAugment's default policy at strength 1: translation 1/8 of the side, cutout 1/2 of it
DIFFAUGMENT = (("color", 1.0), ("translation", 0.125), ("cutout", 0.5))


@CORRUPTIONS.register("diffaugment")
class _DiffAugment(_Color):
    """DiffAugment's policy color,translation,cutout in that order, each kind at its level times
    this one's strength (so per-image levels and schedules scale the three together)."""

    @staticmethod
    def degrade(x, levels, generator, corruption, bound):
        for kind, scale in DIFFAUGMENT:
            x = CORRUPTIONS[kind].degrade(x, levels * scale, generator, corruption, bound * scale)
        return x


KINDS = tuple(CORRUPTIONS)  # the built-in kinds


# --- the object the models hold ----------------------------------------------------------------


class Corruption(nn.Module):
    """A degradation with a level (fixed, per-image random, or scheduled); see the module docstring.

    Args:
        kind: one of KINDS.
        level: the level (units per kind above); with a schedule, the start (linear, cosine) or
            the ceiling (adaptive).
        level_range: None or [lo, hi]: each image draws its level uniformly from [lo, hi]
            (only with the constant schedule).
        schedule: None, a Schedule, or a mapping {kind, images, target, step} (see make_schedule).
        clip: gaussian only: clamp the result to [0, 1] (default False keeps the std exact).
        radius: rotate_crop only: disc radius as a fraction of min(H, W), in (0, 0.5].
        key: the config path used in error messages.

    Call: `out = corruption(x)` or `out, levels = corruption(x, return_levels=True)`, where
    levels [B] are the per-image levels used (targets for a noise-level head). Advance the schedule
    with `step(n_images)` (under DDP: the images of all ranks) and feed adaptive with
    `update(real_sign_accuracy)` (all-reduced across ranks, so every rank keeps the same level).
    The images seen and the schedule's state travel in `state_dict()`, so a resumed run continues.
    """

    def __init__(
        self,
        kind: str = "none",
        level: float = 0.0,
        level_range: Sequence[float] | None = None,
        schedule: Mapping | Schedule | None = None,
        clip: bool = False,
        radius: float = 0.3,
        key: str = "corruption",
    ):
        super().__init__()
        self._kind = CORRUPTIONS.get(kind, f"{key}.kind")
        self._kind.check_level(level, f"{key}.level")
        if level_range is not None:
            ok = isinstance(level_range, Sequence) and not isinstance(level_range, str)
            ok = ok and len(level_range) == 2 and all(_is_number(v) for v in level_range)
            require(ok and level_range[0] <= level_range[1], f"{key}.level_range",
                    "null or [lo, hi] with lo <= hi", level_range)
            for v in level_range:
                self._kind.check_level(v, f"{key}.level_range")
            level_range = (float(level_range[0]), float(level_range[1]))
        self.schedule = make_schedule(schedule, float(level), f"{key}.schedule")
        require(level_range is None or isinstance(self.schedule, ConstantSchedule),
                f"{key}.level_range", f"null unless {key}.schedule.kind=constant", level_range)
        require(isinstance(clip, bool), f"{key}.clip", "true | false", clip)
        require(_is_number(radius) and 0 < radius <= 0.5, f"{key}.radius", "a number in (0, 0.5]", radius)
        self.kind, self.level, self.level_range = kind, float(level), level_range
        self.clip, self.radius, self.key = clip, float(radius), key
        self.images_seen = 0

    # -- the level -------------------------------------------------------------------------
    @property
    def current_level(self) -> float:
        """The level now (to log): the scheduled level, or the mean of level_range; 0 for none."""
        if not self._kind.levelled:
            return 0.0
        if self.level_range is not None:
            return 0.5 * (self.level_range[0] + self.level_range[1])
        return self.schedule.value(self.images_seen)

    def step(self, n_images: int) -> None:
        """Count `n_images` more training images (moves linear and cosine schedules along)."""
        self.images_seen += int(n_images)

    def update(self, real_sign_accuracy: float) -> None:
        """Feedback for the adaptive schedule (ignored by the others)."""
        self.schedule.update(real_sign_accuracy)

    def level_bound(self, level: float | Tensor | None = None) -> float:
        """The largest per-image level of a call, known on the host (no device sync): the level
        given as a number, else the top of level_range, else the scheduled level. A per-image
        level tensor is taken to lie within it, as the levels this corruption draws do."""
        if level is not None and not isinstance(level, Tensor):
            return float(level)
        return self.level_range[1] if self.level_range is not None else self.current_level

    def sample_levels(self, batch_size: int, generator: torch.Generator | ExampleNoise | None = None,
                      device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Tensor:
        """Per-image levels [batch_size]: uniform in level_range, else the current level."""
        like = torch.empty(0, device=device, dtype=dtype)
        if self._kind.levelled and self.level_range is not None:
            lo, hi = self.level_range
            return lo + (hi - lo) * _rand((batch_size,), like, generator)
        return torch.full((batch_size,), self.current_level, device=device, dtype=dtype)

    # -- applying it -----------------------------------------------------------------------
    def config(self) -> dict:
        """The plain config that rebuilds this corruption with Corruption(**config): what a
        checkpoint stores.

        Only configuration: the images seen and an adaptive schedule's level are state, saved in the
        module's state_dict (Corruption.get_extra_state).
        """
        return {"kind": self.kind, "level": self.level,
                "level_range": None if self.level_range is None else list(self.level_range),
                "schedule": self.schedule.config(), "clip": self.clip, "radius": self.radius,
                "key": self.key}

    def forward(self, x: Tensor, level: float | Tensor | None = None,
                generator: torch.Generator | ExampleNoise | None = None, return_levels: bool = False):
        """Degrade images x [B, C, H, W] in [0, 1]; `level` (float or [B]) overrides the sampled
        levels. Random draws come from `generator` (see _rand), else the global RNG."""
        b = x.shape[0]
        if level is None:
            levels = self.sample_levels(b, generator, x.device, x.dtype)
        else:
            if not isinstance(level, Tensor):
                self._kind.check_level(level, "level")
            levels = torch.as_tensor(level, device=x.device, dtype=x.dtype).expand(b)
        out = self._kind.degrade(x, levels, generator, self, self.level_bound(level))
        return (out, levels) if return_levels else out

    # -- checkpoints: nn.Module saves this under `<name>._extra_state` -------------------------
    def get_extra_state(self) -> dict:
        return {"images_seen": self.images_seen, "schedule": self.schedule.state_dict()}

    def set_extra_state(self, state: dict) -> None:
        self.images_seen = int(state["images_seen"])
        self.schedule.load_state_dict(state["schedule"])

    def extra_repr(self) -> str:
        level = f"level_range={list(self.level_range)}" if self.level_range else f"schedule={self.schedule!r}"
        return f"kind={self.kind}, {level}"


def as_corruption(spec) -> Corruption:
    """A Corruption from what a model was given: one built by Hydra, its plain config (a mapping,
    as a checkpoint stores it; a `_target_` key is ignored), or None for no corruption."""
    if spec is None:
        return Corruption("none")
    if isinstance(spec, Corruption):
        return spec
    require(isinstance(spec, Mapping), "model.corruption",
            "a Corruption or its config mapping (model.corruption: ${corruption})", spec)
    return Corruption(**{k: v for k, v in spec.items() if k != "_target_"})
