"""Adam as every genlab family builds it, with the run's `optim` settings.

`optim.impl` chooses torch's implementation of the one update: `single` (a Python loop over the
parameters, torch's default on the CPU), `foreach` (one batched kernel per operation, torch's
default on CUDA) or `fused` (one kernel for the whole update). They differ only in float rounding
(tests/test_optim.py trains one run with each: the loss curves agree to 1e-5 relative). For the
small networks of the VAE papers the loop's overhead is a large part of a CPU step: at batch 20,
`fused` ran the 784-200-200-50 VAE's plain steps about 1.2x as fast as `single`
(benchmarks/bench_train.py). `auto` (the default) takes `fused` where torch has it for the
parameters (floating point, on the CPU or a CUDA device) and torch's own default elsewhere.

`optim.eps` is Adam's epsilon (torch's 1e-8; Burda et al. 2016 used 1e-4). A family passes its
own lr, betas and weight decay.

OPTIMIZERS is the registry of a family's optimizer component (`model.optimizer`, used by the RBM
and the deep classifier): `sgd` (momentum) and `adam` (through `adam` above, so the run's `optim`
settings apply). A component's `make(params, lr, weight_decay, optim)` builds the torch optimizer;
the learning rate and the weight decay (an L2 penalty on the family's parameters, part of its
objective rather than of the update rule) stay settings of the family.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

import torch

from genlab.config import ConfigError, require, require_choice, require_positive
from genlab.registry import Component, Registry
from genlab.settings import Settings, setting

IMPLS = ("auto", "fused", "foreach", "single")
FUSED_DEVICES = ("cpu", "cuda")
DEFAULTS = {"impl": "auto", "eps": 1e-8}


def check_settings(settings: Mapping, key: str = "optim") -> dict:
    """The run's `optim` node as a plain dict, every value checked (one line naming the key)."""
    unknown = sorted(set(settings) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]} is not an option of {key}; allowed: {', '.join(DEFAULTS)}")
    out = {**DEFAULTS, **settings}
    require_choice(out["impl"], f"{key}.impl", IMPLS)
    require_positive(out["eps"], f"{key}.eps")
    return out


def adam(params: Iterable[torch.Tensor], impl: str = "auto", eps: float = 1e-8,
         **kwargs) -> torch.optim.Adam:
    """torch.optim.Adam over `params` with `kwargs` (lr, betas, weight_decay), epsilon `eps` and
    the implementation `impl` (IMPLS)."""
    params = list(params)
    check_settings({"impl": impl, "eps": eps})
    if impl == "auto":
        fusable = all(p.is_floating_point() and p.device.type in FUSED_DEVICES for p in params)
        impl = "fused" if params and fusable else "default"
    flags = {"fused": {"fused": True}, "foreach": {"foreach": True},
             "single": {"foreach": False, "fused": False}, "default": {}}[impl]
    return torch.optim.Adam(params, eps=eps, **kwargs, **flags)


# --- the optimizer component of a family (`model.optimizer`) -------------------------------------

OPTIMIZERS: Registry[type[Optimizer]] = Registry("optimizer", "model.optimizer")


class Optimizer(Component):
    """A torch optimizer's recipe: `make` builds it over a family's parameters."""

    def make(self, params: Iterable[torch.Tensor], lr: float, weight_decay: float = 0.0,
             optim: Mapping = DEFAULTS) -> torch.optim.Optimizer:
        """The optimizer over `params` with the family's learning rate and weight decay (L2);
        `optim`: the run's `optim` settings (Adam's implementation and epsilon)."""
        raise NotImplementedError


def _momentum(value, key: str) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    require(ok and 0 <= value < 1, key, "a number in [0, 1)", value)


@dataclasses.dataclass
class SGDSettings(Settings):
    momentum: float = setting(0.0, _momentum)  # heavy-ball momentum; 0 = plain gradient descent


@OPTIMIZERS.register("sgd")
class SGD(Optimizer):
    Settings = SGDSettings

    def make(self, params, lr, weight_decay=0.0, optim=DEFAULTS):
        return torch.optim.SGD(params, lr=lr, momentum=self.settings.momentum, weight_decay=weight_decay)


@OPTIMIZERS.register("adam")
class Adam(Optimizer):
    """genlab's Adam (`adam`), torch's betas."""

    def make(self, params, lr, weight_decay=0.0, optim=DEFAULTS):
        return adam(params, **optim, lr=lr, weight_decay=weight_decay)
