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
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

from genlab.config import ConfigError, require_choice, require_positive

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
