"""genlab.metrics.ais: the RBM's log partition function. Known answers: on an RBM small enough to
enumerate (6 visible, 4 hidden units), exact_log_z equals the sum over all 2^10 joint states, and
AIS's estimate lies within a few hundredths of a nat of it."""

import itertools

import pytest
import torch

from genlab.metrics.ais import ais_log_z, ais_schedule, exact_log_z


def tiny(v: int = 6, h: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(v, h, generator=g), torch.randn(v, generator=g), torch.randn(h, generator=g))


def brute_force_log_z(W, b, c) -> float:
    """log sum over every (v, h) of exp(b.v + c.h + v.W.h), in float64."""
    vs = torch.tensor(list(itertools.product([0.0, 1.0], repeat=len(b))), dtype=torch.float64)
    hs = torch.tensor(list(itertools.product([0.0, 1.0], repeat=len(c))), dtype=torch.float64)
    W, b, c = W.double(), b.double(), c.double()
    neg_energy = (vs @ b)[:, None] + (hs @ c)[None, :] + vs @ W @ hs.T
    return float(torch.logsumexp(neg_energy.flatten(), 0))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_log_z_is_the_sum_over_every_state(seed):
    W, b, c = tiny(seed=seed)
    assert exact_log_z(W, b, c) == pytest.approx(brute_force_log_z(W, b, c), abs=1e-9)


def test_exact_log_z_refuses_a_hidden_layer_too_wide_to_enumerate():
    with pytest.raises(ValueError, match="H=21 is too many"):
        exact_log_z(torch.zeros(3, 21), torch.zeros(3), torch.zeros(21))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ais_matches_the_enumerated_log_z(seed):
    """1,000 temperatures and 200 runs from a uniform base model: within 0.05 nats of the exact
    log Z, with a standard error below that; the same generator seed gives the same estimate."""
    W, b, c = tiny(seed=seed)
    exact = brute_force_log_z(W, b, c)

    def estimate():
        return ais_log_z(W, b, c, torch.zeros(len(b)), ais_schedule(1000), 200,
                         torch.Generator().manual_seed(seed))

    est, stderr = estimate()
    assert abs(est - exact) < 0.05, (est, exact)
    assert 0 < stderr < 0.05
    assert estimate() == (est, stderr)


def test_ais_with_the_rbm_as_its_own_base_is_exact():
    """With W = 0 and c = 0 the RBM is the base model with biases b (Z = 2^H prod_i (1 + e^b_i)):
    every importance weight is 1, so AIS is exact whatever the schedule and draws."""
    b = torch.tensor([0.3, -1.0, 2.0, 0.0, 0.5, -0.2])
    W, c = torch.zeros(6, 4), torch.zeros(4)
    est, stderr = ais_log_z(W, b, c, b, ais_schedule(20), 10, torch.Generator().manual_seed(0))
    assert est == pytest.approx(brute_force_log_z(W, b, c), abs=1e-6)
    assert stderr == pytest.approx(0, abs=1e-6)  # float32 rounding of the mixed biases


def test_ais_schedule_is_monotone_from_zero_to_one():
    for n in (6, 100, 14500):
        b = ais_schedule(n)
        assert b[0] == 0 and b[-1] == 1 and (b.diff() > 0).all()
        assert abs(len(b) - 1 - n) <= 6
