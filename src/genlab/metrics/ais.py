"""The log partition function of a Bernoulli-Bernoulli RBM (genlab.models.rbm): annealed
importance sampling (Salakhutdinov & Murray 2008) for any size, exact enumeration of the hidden
layer for small ones (the known answer AIS is tested against).

The RBM: W [V, H], visible biases b [V], hidden biases c [H],
    E(v, h) = -b.v - c.h - v.W.h,   Z = sum_{v, h} exp(-E(v, h)),
    F(v) = -b.v - sum_j softplus(c_j + W_j.v),   p(v) = exp(-F(v)) / Z.
Every log Z here is in nats.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

MAX_EXACT_HIDDEN = 20  # exact_log_z sums 2^H terms


def ais_schedule(n: int) -> Tensor:
    """n inverse temperatures from 0 to 1 (both included), spaced as in Salakhutdinov & Murray
    2008 (500 in [0, 0.5], 4,000 in [0.5, 0.9], 10,000 in [0.9, 1] of 14,500): densest near 1,
    where the intermediate distributions change fastest."""
    parts = (0.5, 0.9, 1.0)
    counts = [max(2, round(n * f)) for f in (500 / 14500, 4000 / 14500)]
    counts.append(max(2, n - sum(counts)))
    betas, start = [torch.zeros(1, dtype=torch.float64)], 0.0
    for end, m in zip(parts, counts, strict=True):
        betas.append(torch.linspace(start, end, m + 1, dtype=torch.float64)[1:])
        start = end
    return torch.cat(betas)


def ais_log_z(W: Tensor, b: Tensor, c: Tensor, base_bias: Tensor, betas: Tensor, runs: int,
              generator: torch.Generator) -> tuple[float, float]:
    """Annealed importance sampling estimate of log Z of the RBM (W [V, H], b [V], c [H]) and the
    standard error of that estimate (Salakhutdinov & Murray 2008, section 4.2).

    Intermediate distributions p_k(v) proportional to
        p*_k(v) = exp((1 - beta_k) b_A.v + beta_k b.v) prod_j (1 + exp(beta_k (c_j + W_j.v))),
    from the base-rate model (beta = 0: independent pixels with biases b_A = base_bias, Z_0 = 2^H
    prod_i (1 + exp(b_A,i))) to the RBM's own marginal (beta = 1, p* = exp(-F)); `betas` is the
    schedule (e.g. ais_schedule(n)). Each of `runs` chains starts from an exact draw of the base
    model; at step k its log weight grows by log p*_k(v) - log p*_{k-1}(v), then v moves by one
    Gibbs sweep that leaves p_k invariant. Z_K / Z_0 is estimated by the mean of the weights; the
    weights are accumulated in float64. Every draw comes from `generator` (on W's device)."""
    device = W.device
    b_a = base_bias.to(device)
    v = (torch.rand(runs, len(b), generator=generator, device=device) < torch.sigmoid(b_a)).to(W.dtype)
    log_w = torch.zeros(runs, dtype=torch.float64, device=device)

    def log_p_star(v: Tensor, beta: float, a: Tensor) -> Tensor:
        field = ((1 - beta) * b_a + beta * b).double()
        return v.double() @ field + F.softplus(beta * a.double()).sum(1)

    betas = betas.tolist()
    for prev, beta in zip(betas[:-1], betas[1:], strict=True):
        a = v @ W + c  # the hidden units' input, shared by both terms and the Gibbs sweep
        log_w += log_p_star(v, beta, a) - log_p_star(v, prev, a)
        h = (torch.rand(a.shape, generator=generator, device=device) < torch.sigmoid(beta * a)).to(W.dtype)
        p_v = torch.sigmoid((1 - beta) * b_a + beta * (h @ W.T + b))
        v = (torch.rand(p_v.shape, generator=generator, device=device) < p_v).to(W.dtype)
    H = W.shape[1]
    log_z0 = H * math.log(2.0) + F.softplus(b_a.double()).sum()
    log_mean_w = torch.logsumexp(log_w, 0) - math.log(runs)
    w = torch.exp(log_w - log_w.max())  # relative weights; their spread gives the error of log Z
    stderr = (w.std() / (w.mean() * math.sqrt(runs))).item() if runs > 1 else math.inf
    return float(log_z0 + log_mean_w), stderr


def exact_log_z(W: Tensor, b: Tensor, c: Tensor) -> float:
    """log Z of the RBM (W [V, H], b [V], c [H]) by enumerating the hidden layer,
    log Z = log sum_h exp(c.h) prod_i (1 + exp(b_i + W_i.h)), in float64; only for
    H <= MAX_EXACT_HIDDEN (2^H terms)."""
    H = W.shape[1]
    if H > MAX_EXACT_HIDDEN:
        raise ValueError(f"exact log Z enumerates 2^H hidden states; H={H} is too many "
                         f"(<= {MAX_EXACT_HIDDEN})")
    states = ((torch.arange(2**H, device=W.device).unsqueeze(1) >> torch.arange(H, device=W.device)) & 1)
    log_terms = []
    for h in states.double().split(4096):
        log_terms.append(h @ c.double() + F.softplus(h @ W.double().T + b.double()).sum(1))
    return float(torch.logsumexp(torch.cat(log_terms), 0))
