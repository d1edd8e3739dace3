"""Annealed gradient noise (Neelakantan et al. 2015, "Adding gradient noise improves learning").

After backward and before each optimizer step, every gradient g gets g + N(0, sigma_t^2) with

    sigma_t^2 = eta / (1 + t)^gamma,    t = trainer.global_step (optimizer steps taken so far),

a variance in squared gradient units. The paper used eta in {0.01, 0.3, 1.0} and gamma = 0.55.

The noise comes from a generator seeded by (run seed, t), not from the global RNG: every DDP rank
then adds the same noise to its (already all-reduced) gradients, so the replicas stay identical,
and a resumed run draws what the uninterrupted one would have.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import pytorch_lightning as pl
import torch

from genlab.config import require_nonnegative
from genlab.seeding import generator_for, run_seed


def noise_std(step: int, eta: float, gamma: float) -> float:
    """sigma_t = sqrt(eta / (1 + step)^gamma), the std of the noise added at optimizer step `step`."""
    return math.sqrt(eta / (1.0 + step) ** gamma)


@torch.no_grad()
def add_gradient_noise(parameters: Iterable[torch.Tensor], step: int, eta: float, gamma: float,
                       generator: torch.Generator | None = None) -> float:
    """Add N(0, eta / (1 + step)^gamma) to the .grad of each parameter (those without one are skipped).

    For models with manual optimisation: call between `manual_backward` and `opt.step()`. The noise
    is drawn on the generator's device (the global RNG of the gradient's device without one).
    Returns the std used.
    """
    require_nonnegative(eta, "gradient_noise.eta")
    require_nonnegative(gamma, "gradient_noise.gamma")
    std = noise_std(step, eta, gamma)
    if std == 0.0:
        return 0.0
    for p in parameters:
        g = p.grad
        if g is None:
            continue
        device = g.device if generator is None else generator.device
        noise = torch.randn(g.shape, generator=generator, device=device, dtype=g.dtype)
        g.add_(noise.to(g.device), alpha=std)
    return std


class GradientNoise(pl.Callback):
    """Lightning callback adding annealed Gaussian noise to all gradients before each optimizer step.

    Runs in `on_before_optimizer_step`, which Lightning calls after gradients are unscaled (mixed
    precision) and before clipping, for automatic optimisation and for each `opt.step()` of a
    manually optimised model alike. Every parameter of the optimizer being stepped gets noise.
    """

    def __init__(self, eta: float = 0.3, gamma: float = 0.55):
        super().__init__()
        require_nonnegative(eta, "callbacks.gradient_noise.eta")
        require_nonnegative(gamma, "callbacks.gradient_noise.gamma")
        self.eta, self.gamma = float(eta), float(gamma)
        self.last_std = 0.0  # the std added at the latest step, for whoever wants to log it

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        if self.eta == 0.0:  # switched off (the default config)
            return
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not params:
            return
        step = trainer.global_step
        # a fresh generator per step: same draws on every rank and after a resume
        generator = generator_for(run_seed(), "gradient_noise", step, device=params[0].grad.device)
        self.last_std = add_gradient_noise(params, step, self.eta, self.gamma, generator)
        pl_module.log("train/grad_noise_std", self.last_std)
