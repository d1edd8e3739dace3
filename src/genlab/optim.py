"""Adam as every genlab family builds it, with its implementation chosen once for the run.

torch's Adam has three implementations of one update: `single` (a Python loop over the
parameters, torch's default on the CPU), `foreach` (one batched kernel per operation, torch's
default on CUDA) and `fused` (one kernel for the whole update). They differ only in float rounding
(tests/test_optim.py trains the same run with each: the loss curves agree to 1e-5 relative). For
the small networks of the VAE papers the loop's overhead is a large part of a CPU step: at batch
20, `fused` ran the 784-200-200-50 VAE's steps about 1.4x as fast as `single` (`make bench`).

`optim_impl=auto` (the default) takes `fused` where torch has it for the parameters (floating
point, on the CPU or a CUDA device) and torch's own default elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from genlab.config import require_choice

IMPLS = ("auto", "fused", "foreach", "single")
FUSED_DEVICES = ("cpu", "cuda")


def check_impl(impl: str, key: str = "optim_impl") -> str:
    require_choice(impl, key, IMPLS)
    return impl


def adam(params: Iterable[torch.Tensor], impl: str = "auto", **kwargs) -> torch.optim.Adam:
    """torch.optim.Adam over `params` with `kwargs` (lr, betas, weight_decay) and the
    implementation `impl` (IMPLS)."""
    params = list(params)
    check_impl(impl)
    if impl == "auto":
        fusable = all(p.is_floating_point() and p.device.type in FUSED_DEVICES for p in params)
        impl = "fused" if params and fusable else "default"
    flags = {"fused": {"fused": True}, "foreach": {"foreach": True},
             "single": {"foreach": False, "fused": False}, "default": {}}[impl]
    return torch.optim.Adam(params, **kwargs, **flags)
