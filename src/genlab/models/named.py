"""Named latent units: a VAE whose first latent units are tied to named factors of the data
(`model=named_vae`: model=vae with model.named_factors and model.objective=named_elbo).

`model.named_factors` maps factor names of the data (genlab.capabilities.NamedFactors, e.g. dSprites)
to a kind, and the named units come first in the latent vector, in that order:
  - circle: two units, trained towards (cos phi, sin phi), phi the factor's rotation as a
    fraction of its symmetry period times 2 pi: one turn of the circle is the smallest rotation
    that maps the image onto itself (dSprites: 90 degrees for a square, 180 for an ellipse, 360
    for a heart), so images that look the same get the same target;
  - line: one unit, trained towards the level index standardised over the factor's levels
    (mean 0, variance 1 under the uniform grid: inside +-sqrt 3 whatever the level count).
The other units are free, as in the plain VAE. The supervised term (docs/objectives.md) is the
negative log density of the targets under the named units' posterior, over the labelled images
of a batch: `labelled_fraction` of the data set, a fixed subset chosen by the index of each image
in the factor grid (seeded by `labelled_seed`, the same for every run seed); the named_elbo
objective (genlab.models.objectives) weights it by `supervised_weight`.
`supervised_weight=0` is the unsupervised VAE with the same metrics: for each named factor,
val/test `<name>_err_deg` (circle: mean absolute error of the predicted rotation in degrees of
the image, modulo the symmetry) or `<name>_mae` (line: mean absolute error in levels).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

from genlab.capabilities import NamedFactors
from genlab.config import ConfigError, require
from genlab.registry import Registry
from genlab.seeding import mix_seed

SQRT3 = math.sqrt(3.0)
LOG_2PI = math.log(2 * math.pi)
SWEEP = 2.0  # a free unit is swept over +-2 prior standard deviations


def grid_index(factors: Tensor, sizes: tuple[int, ...]) -> Tensor:
    """Factor level indices [B, K] -> each image's index in the full factor grid (the first
    factor slowest, as dSprites orders it)."""
    idx = torch.zeros(factors.shape[0], dtype=torch.long, device=factors.device)
    for i, size in enumerate(sizes):
        idx = idx * size + factors[:, i].long()
    return idx


def labelled_mask(n: int, fraction: float, seed: int) -> Tensor:
    """Bool [n]: a seeded random subset of exactly max(1, round(fraction * n)) of n indices."""
    g = torch.Generator().manual_seed(mix_seed(seed, "labelled"))
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=g)[: max(1, round(fraction * n))]] = True
    return mask


def standardised(level: Tensor, size: int) -> Tensor:
    """Level indices 0..size-1 -> mean 0, variance 1 over the uniform levels."""
    return (level.float() - (size - 1) / 2) / math.sqrt(max(size**2 - 1, 1) / 12)


def wrapped(a: Tensor) -> Tensor:
    """Angles in radians -> the same angles in [-pi, pi)."""
    return torch.remainder(a + math.pi, 2 * math.pi) - math.pi


# how a named factor is coded in its units: kind name (model.named_factors.<factor>) -> coding
CODINGS: Registry[type[Coding]] = Registry("named factor kind", "model.named_factors")


class Coding:
    """A named factor's code in `units` latent units: what they are trained towards, how far a
    code is from the factor, and the values a traversal sweeps them over."""

    units = 1
    metric_suffix = "mae"

    def target(self, data, factors: Tensor, name: str) -> Tensor:
        """[B, units]: the code of each image's factor value."""
        raise NotImplementedError

    def error(self, code: Tensor, data, factors: Tensor, name: str) -> Tensor:
        """[B]: how far each image's code [B, units] is from its factor value."""
        raise NotImplementedError

    def sweep(self, steps: int) -> Tensor:
        """[steps, units]: the codes a traversal sets, over the factor's range."""
        raise NotImplementedError

    def from_normal(self, eps: Tensor) -> Tensor:
        """[B, units] standard normal draws -> codes drawn uniformly over the factor's range (what a
        generator is given for the factor: genlab.models.gan.DCGAN with named_factors)."""
        raise NotImplementedError


def _phase(data, factors: Tensor, name: str) -> tuple[Tensor, Tensor]:
    """The rotation as an angle phi on the circle (one symmetry period per turn) and the period."""
    theta, period = data.rotation(factors, name)
    return 2 * math.pi * torch.remainder(theta, period) / period, period


@CODINGS.register("circle")
class Circle(Coding):
    """(cos phi, sin phi) of the factor's rotation; errors in degrees of the image."""

    units = 2
    metric_suffix = "err_deg"

    def target(self, data, factors, name):
        phi, _ = _phase(data, factors, name)
        return torch.stack([torch.cos(phi), torch.sin(phi)], dim=1)

    def error(self, code, data, factors, name):
        phi, period = _phase(data, factors, name)
        err = wrapped(torch.atan2(code[:, 1], code[:, 0]) - phi).abs()
        return torch.rad2deg(err * period / (2 * math.pi))

    def sweep(self, steps):
        a = torch.arange(steps) * (2 * math.pi / steps)
        return torch.stack([torch.cos(a), torch.sin(a)], dim=1)

    def from_normal(self, eps):
        # an isotropic Gaussian pair has a uniform angle: (cos phi, sin phi), phi ~ U[0, 2 pi)
        return eps / eps.norm(dim=1, keepdim=True).clamp(min=1e-12)


@CODINGS.register("line")
class Line(Coding):
    """The level index standardised over the factor's levels; errors in levels."""

    def target(self, data, factors, name):
        i = list(data.factor_names).index(name)
        return standardised(factors[:, i], data.factor_sizes[i]).unsqueeze(1)

    def error(self, code, data, factors, name):
        i = list(data.factor_names).index(name)
        size = data.factor_sizes[i]
        level = code[:, 0] * math.sqrt(max(size**2 - 1, 1) / 12) + (size - 1) / 2
        return (level - factors[:, i].float()).abs()

    def sweep(self, steps):
        return torch.linspace(-SQRT3, SQRT3, steps).unsqueeze(1)

    def from_normal(self, eps):
        # uniform over the standardised levels' range, +-sqrt 3, through the normal's CDF
        return SQRT3 * torch.erf(eps / math.sqrt(2.0))


def labelled_fraction_rule(value, key: str) -> None:
    """The rule of model.labelled_fraction (genlab.settings.setting)."""
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    require(ok and 0 < value <= 1, key, "a number in (0, 1]: the fraction of training images whose "
            "factors are given", value)


def check_named_factors(named_factors, latent_dim: int) -> dict[str, str]:
    """model.named_factors as {name: kind} without the nulls (a null drops a factor), checked
    against the kinds and the latent units there are."""
    allowed = "a mapping of the data's factor names to circle | line, e.g. {orientation: circle}"
    require(isinstance(named_factors, Mapping) and any(v is not None for v in named_factors.values()),
            "model.named_factors", allowed, named_factors)
    named = {k: v for k, v in named_factors.items() if v is not None}
    for name, kind in named.items():
        CODINGS.get(kind, f"model.named_factors.{name}")
    n_named = sum(CODINGS[k].units for k in named.values())
    require(latent_dim >= n_named, "model.latent_dim",
            f"an integer >= {n_named}, the units model.named_factors takes", latent_dim)
    return named


class NamedUnits:
    """The latent layout of a model with `model.named_factors`: which units carry which factor, which
    training images carry labels, what the units are trained towards and how far they are from it
    (see the module's docstring). The VAE and the DCGAN hold one as `named` (None without named
    factors)."""

    def __init__(self, named_factors: Mapping, latent_dim: int, labelled_fraction: float, labelled_seed: int):
        named = check_named_factors(named_factors, latent_dim)
        # name -> (coding, first unit); the named units come first, in the config's order
        self.units: dict[str, tuple[Coding, int]] = {}
        first = 0
        for name, kind in named.items():
            self.units[name] = (CODINGS[kind](), first)
            first += CODINGS[kind].units
        self.n_named = first
        self.labelled_fraction, self.labelled_seed = labelled_fraction, labelled_seed
        self.factor_data: NamedFactors | None = None
        self._labelled: Tensor | None = None

    def kinds(self) -> dict[str, str]:
        """factor name -> its coding's kind (circle | line), in the units' order."""
        return {name: coding.registry_name for name, (coding, _) in self.units.items()}

    def from_normal(self, z: Tensor) -> Tensor:
        """Standard normal draws [B, D] with the named units mapped to codes drawn uniformly over
        each factor's range (Coding.from_normal); the other units unchanged."""
        z = z.clone()
        for coding, u in self.units.values():
            z[:, u:u + coding.units] = coding.from_normal(z[:, u:u + coding.units])
        return z

    def command(self, z: Tensor, values: Mapping[str, Tensor]) -> Tensor:
        """z [B, D] with each named factor's units set to values[name] [B, units] (or [units], the
        same for every row); a factor without a value keeps its units."""
        z = z.clone()
        for name, v in values.items():
            if name not in self.units:
                raise ConfigError(f"named factor {name!r} is invalid; allowed: {' | '.join(self.units)}")
            coding, u = self.units[name]
            z[:, u:u + coding.units] = torch.as_tensor(v).to(z).expand(len(z), coding.units)
        return z

    def metric(self, name: str) -> str:
        return f"{name}_{self.units[name][0].metric_suffix}"

    def metrics(self) -> list[str]:
        return [self.metric(n) for n in self.units]

    def bind_data(self, data) -> None:
        """Check the named factors against the data's and choose the labelled subset."""
        require(isinstance(data, NamedFactors), "model.named_factors",
                "only with data whose factors have names (data=dsprites)",
                {name: coding.registry_name for name, (coding, _) in self.units.items()})
        for name, (coding, _) in self.units.items():
            require(name in data.factor_names, "model.named_factors", "factors of the data: "
                    + " | ".join(data.factor_names), name)
            if isinstance(coding, Circle):
                require(name in data.periodic_factors, f"model.named_factors.{name}",
                        "line (circle needs a periodic factor: "
                        + (" | ".join(data.periodic_factors) or "this data has none") + ")", "circle")
        self.factor_data = data
        self._labelled = labelled_mask(math.prod(data.factor_sizes), self.labelled_fraction,
                                       self.labelled_seed)

    def labelled(self, factors: Tensor) -> Tensor:
        """Bool [B]: which images of a batch (given their factor levels) carry labels."""
        if self._labelled.device != factors.device:
            self._labelled = self._labelled.to(factors.device)
        return self._labelled[grid_index(factors, tuple(self.factor_data.factor_sizes))]

    def targets(self, factors: Tensor) -> Tensor:
        """What the named units are trained towards, [B, n_named] (see the module's docstring)."""
        return torch.cat([coding.target(self.factor_data, factors, name)
                          for name, (coding, _) in self.units.items()], dim=1)

    def supervised_term(self, mu: Tensor, std: Tensor, factors: Tensor) -> Tensor:
        """-log N(target; mu, std^2) summed over the named units, the posterior's density at the
        factor's value (log q(t | x) itself for a Gaussian posterior), averaged over the labelled
        images of the batch; 0 when the batch has none. It pulls the means to the targets and
        shrinks those units' std, so that the decoder can read them."""
        mask = self.labelled(factors)
        n = self.n_named
        mu, std = mu[:, :n], std[:, :n]
        nll = (0.5 * ((self.targets(factors) - mu) / std) ** 2 + std.log() + 0.5 * LOG_2PI).sum(1)
        return (nll * mask).sum() / mask.sum().clamp(min=1)

    def errors(self, mu: Tensor, factors: Tensor) -> dict[str, Tensor]:
        """Per image, how far the named units are from each named factor: circle, the absolute
        error of the predicted rotation in degrees of the image (the circle's angle error scaled
        by the symmetry period); line, the absolute error in levels."""
        return {self.metric(name): coding.error(mu[:, u:u + coding.units], self.factor_data, factors, name)
                for name, (coding, u) in self.units.items()}


def sweep(model, unit: str, steps: int) -> tuple[slice, Tensor]:
    """The latent units `unit` names and the `steps` values a traversal sets them to,
    [steps, units]: a circle factor goes once round the unit circle (one symmetry period), a line
    factor over +-sqrt 3 (its standardised levels), a latent index (a string of digits) over
    +-2 prior standard deviations."""
    named = model.named.units if model.named is not None else {}
    dim = model.hparams.latent_dim
    if unit in named:
        coding, u = named[unit]
        return slice(u, u + coding.units), coding.sweep(steps)
    if not (isinstance(unit, str) and unit.isdigit() and int(unit) < dim):
        raise ConfigError(f"unit={unit!r} is invalid; allowed: "
                          + " | ".join([*named, f"a latent index 0..{dim - 1}", "all"]))
    i = int(unit)
    return slice(i, i + 1), torch.linspace(-SWEEP, SWEEP, steps).unsqueeze(1)


def sweeps(model, unit: str, steps: int) -> list[tuple[slice, Tensor]]:
    """`sweep` of one unit, or with unit="all" of every latent index in turn (one traversal row
    per unit: which unit codes which factor)."""
    if unit == "all":
        return [sweep(model, str(u), steps) for u in range(model.hparams.latent_dim)]
    return [sweep(model, unit, steps)]


@torch.no_grad()
def traverse(model, x: Tensor, units: slice, values: Tensor) -> Tensor:
    """Decoded traversals: each image's posterior mean with `units` set to each row of `values`
    in turn, the other units fixed: [len(x) * steps, C, H, W], one image after another."""
    z = model.posterior(x)[0]
    z = z.unsqueeze(1).repeat(1, len(values), 1)
    z[:, :, units] = values.to(z)
    return model.likelihood.mean(model.decode(z.flatten(0, 1)))


__all__ = ["CODINGS", "Circle", "Line", "NamedUnits", "check_named_factors", "grid_index", "labelled_fraction_rule",
           "labelled_mask", "sweep", "sweeps", "traverse"]
