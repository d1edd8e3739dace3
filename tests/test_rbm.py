"""Restricted Boltzmann machine: conditionals and free energy against brute-force enumeration,
AIS against the exact partition function, CD and PCD raising the exact log-likelihood of real
digits, PCD chains surviving a checkpoint, and a real genlab-train smoke run with genlab-sample's
chain mode."""

import csv
import itertools
import json
import math

import pytest
import torch
from conftest import NO_EVAL, make_cfg
from PIL import Image

from genlab.config import ConfigError
from genlab.data import DigitsDataModule
from genlab.models.rbm import RBM
from genlab.sample import main as sample_main

DIGITS = (1, 8, 8)


def all_states(n: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=n)))


def tiny_rbm(v: int = 6, h: int = 4) -> RBM:
    torch.manual_seed(0)
    m = RBM((1, 1, v), hidden=h, init_std=1.0)
    with torch.no_grad():
        m.b.normal_(0, 1), m.c.normal_(0, 1)
    return m


def test_conditionals_and_free_energy_match_enumeration():
    m = tiny_rbm()
    V, H = all_states(6), all_states(4)  # [64, 6], [16, 4]
    with torch.no_grad():
        # -E(v, h) = b.v + c.h + v.W.h for every pair: [64, 16]
        neg_e = (V @ m.b).unsqueeze(1) + (H @ m.c).unsqueeze(0) + V @ m.W @ H.T
        p_joint = torch.softmax(neg_e.flatten(), 0).view_as(neg_e)
        p_h_given_v = p_joint / p_joint.sum(1, keepdim=True)
        p_v_given_h = p_joint / p_joint.sum(0, keepdim=True)
        vv, hh = V.repeat_interleave(16, 0), H.repeat(64, 1)  # every (v, h) pair, row-major
        got_h = m.log_p_h_given_v(hh, vv).exp().view(64, 16)
        got_v = m.log_p_v_given_h(vv, hh).exp().view(64, 16)
        torch.testing.assert_close(got_h, p_h_given_v, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got_v, p_v_given_h, rtol=1e-5, atol=1e-6)
        # the factorial means are the marginals of the enumerated conditionals
        torch.testing.assert_close(m.p_h_given_v(V), p_h_given_v @ H, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(m.p_v_given_h(H), p_v_given_h.T @ V, rtol=1e-5, atol=1e-6)
        # F(v) = -log sum_h exp(-E(v, h)), and log Z both ways
        torch.testing.assert_close(m.free_energy(V), -torch.logsumexp(neg_e, 1), rtol=1e-5, atol=1e-5)
        assert m.exact_log_partition() == pytest.approx(float(torch.logsumexp(neg_e.flatten(), 0)),
                                                        abs=1e-5)


@pytest.fixture(scope="module")
def digits():
    dm = DigitsDataModule(val_size=150, batch_size=32, binarize="static")
    dm.setup()
    return dm


def train_steps(dm, steps: int, **kw) -> tuple[RBM, list[float]]:
    """An RBM with 12 hidden units (small enough for the exact log Z) trained `steps` updates on
    binarised digits through its own training_step and optimizer; returns it and the exact test
    log-likelihood (nats per image) every 100 updates, the first before training."""
    torch.manual_seed(0)
    m = RBM(DIGITS, hidden=12, optimizer="adam", lr=0.01,
            objective={"name": "cd", "n_chains": 32, **kw})
    m.data_mean.copy_(dm.images("train").flatten(1).mean(0))
    with torch.no_grad():
        m.b.copy_(m.base_bias())
    opt = m.configure_optimizers()
    test = dm.images("test")

    def loglik():
        with torch.no_grad():
            return float(-m.free_energy(test).mean() - m.exact_log_partition())

    curve, step = [loglik()], 0
    while step < steps:
        for batch in dm.train_dataloader():
            loss = m.training_step(batch, step)
            assert math.isfinite(float(loss.detach()))
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step % 100 == 0:
                curve.append(loglik())
            if step == steps:
                break
    return m, curve


@pytest.fixture(scope="module")
def trained(digits):
    return {p: train_steps(digits, 300, persistent=p) for p in (False, True)}


@pytest.mark.parametrize("persistent", [False, True], ids=["cd1", "pcd1"])
def test_cd_and_pcd_raise_the_exact_loglik_of_test_digits(trained, persistent):
    """-log p(v) = F(v) + log Z: the data's free energy measured against the model's own
    normaliser. 300 updates of CD-1 / PCD-1 lower it on held-out digits (measured: about 2 nats
    for either; the bar is 1 nat, well above the ~0.01-nat noise of the curve before learning)."""
    _, curve = trained[persistent]
    assert curve[-1] > curve[0] + 1.0, curve


def test_ais_matches_the_exact_log_partition(trained):
    """AIS with 1,000 temperatures and 100 runs on a trained 64x12 RBM agrees with the enumerated
    log Z to 0.05 nats (measured error ~0.01) and reports a standard error below that bound;
    the same seed gives the same estimate."""
    m, _ = trained[True]
    exact = m.exact_log_partition()
    est, stderr = m.log_partition(betas=1000, runs=100, seed=0)
    assert abs(est - exact) < 0.05, (est, exact)
    assert 0 < stderr < 0.05
    assert m.log_partition(betas=1000, runs=100, seed=0) == (est, stderr)


def test_pcd_chains_travel_in_the_checkpoint(trained):
    m, _ = trained[True]
    state = m.state_dict()
    pcd = {"name": "cd", "n_chains": 32, "persistent": True}
    assert "objective.chains" in state and not torch.equal(state["objective.chains"],
                                                           RBM(DIGITS, hidden=12, objective=pcd).chains)
    fresh = RBM(DIGITS, hidden=12, objective=pcd)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.chains, m.chains) and torch.equal(fresh.data_mean, m.data_mean)


def test_samples_and_chains_are_images_in_unit_range(trained):
    m, _ = trained[False]
    x = m.generate(5)
    assert x.shape == (5, *DIGITS) and 0 <= x.min() and x.max() <= 1
    chain = m.chain(m.starts(3), 20, 4)
    assert chain.shape == (3, 4, *DIGITS)
    assert not torch.equal(chain[:, 0], chain[:, -1])  # the chain moves


def test_bad_values_name_the_key():
    with pytest.raises(ConfigError, match=r"model.hidden=0 is invalid; allowed: a positive integer"):
        RBM(DIGITS, hidden=0)
    with pytest.raises(ConfigError, match=r"model.sample_start='persistent' is invalid; allowed: "
                                          r"random when model.objective.persistent=false"):
        RBM(DIGITS, sample_start="persistent")
    with pytest.raises(ConfigError, match=r"model.ais_betas=3 is invalid"):
        RBM(DIGITS, ais_betas=3)
    with pytest.raises(ConfigError, match=r"model.objective.k=0 is invalid; allowed: a positive integer"):
        RBM(DIGITS, objective={"name": "cd", "k": 0})
    with pytest.raises(ConfigError, match=r"model.optimizer.momentum=1.0 is invalid; allowed: a number in \[0, 1\)"):
        RBM(DIGITS, optimizer={"name": "sgd", "momentum": 1.0})
    with pytest.raises(ConfigError, match=r"model.weight_decay=-1 is invalid; allowed: a number >= 0"):
        RBM(DIGITS, weight_decay=-1)


def test_the_optimizer_is_sgd_with_momentum_unless_told_otherwise():
    """model.optimizer (genlab.optim.OPTIMIZERS): SGD with momentum 0.5 by default, the RBM's weight
    decay reaching whichever optimizer it names."""
    sgd = RBM(DIGITS, hidden=4).configure_optimizers()
    assert type(sgd) is torch.optim.SGD
    assert (sgd.defaults["momentum"], sgd.defaults["weight_decay"]) == (0.5, 1e-4)
    adam = RBM(DIGITS, hidden=4, optimizer="adam", weight_decay=0.01).configure_optimizers()
    assert type(adam) is torch.optim.Adam and adam.defaults["weight_decay"] == 0.01


SMOKE = ["model=rbm", "data=digits", "model.hidden=32", "model.ais_betas=300", "model.ais_runs=20",
         "model.sample_steps=20"]


@pytest.mark.parametrize(("binarize", "extra"), [
    ("dynamic", []),  # the sample-quality callback stays on: FID from the RBM's chains
    ("static", ["model.objective.persistent=true", "model.sample_start=persistent", *NO_EVAL]),
], ids=["cd_dynamic", "pcd_static"])
def test_rbm_trains_tests_and_samples(smoke, tmp_path, binarize, extra):
    run = smoke(tmp_path / "run", *SMOKE, f"data.binarize={binarize}", *extra)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "ok", summary
    for key in ("test/loglik", "test/log_z", "val/pseudo_loglik", "val/free_energy_gap",
                "val/recon_error"):
        assert math.isfinite(summary[key]), key
    # a log-probability of 64 binary pixels: below 0 and above the uniform model's -64 log 2
    assert -64 * math.log(2) - 20 < summary["test/loglik"] < 0
    assert summary["test/pseudo_loglik"] < 0
    if not extra:
        assert math.isfinite(summary["val/fid"])
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r for r in rows if r.get("train/free_energy_gap")]
    names = {p.name for p in (run / "samples").glob("*_final.png")}
    assert {"generated_final.png", "chain_final.png", "filters_final.png"} <= names

    ckpt = run / "checkpoints" / "last.ckpt"
    n, steps, tile = 3, 4, 8 + 2  # save_image pads each tile by 2 pixels
    out = tmp_path / "chain.png"
    sample_main([f"ckpt={ckpt}", "mode=chain", f"n={n}", f"steps={steps}", f"out={out}"])
    assert Image.open(out).size == (steps * tile + 2, n * tile + 2)  # rows = chains
    sample_main([f"ckpt={ckpt}", "mode=chain_data", f"n={n}", f"steps={steps}",
                 f"out={tmp_path / 'data.png'}"])
    assert (tmp_path / "data.png").stat().st_size > 0


def test_rbm_refuses_grey_level_data(tmp_path):
    from genlab.train import train

    cfg = make_cfg(tmp_path / "run", "debug=smoke", "logger=csv", *SMOKE, *NO_EVAL, "data.binarize=none")
    with pytest.raises(ConfigError, match=r"data.binarize='none' is invalid for model=rbm; "
                                          r"allowed: static \| dynamic"):
        train(cfg)


def test_pcd_resumed_from_a_checkpoint_matches_an_uninterrupted_run(smoke, tmp_path):
    """The persistent chains, the binarisation draws and the Gibbs noise all continue where they
    were: two epochs in one go and one epoch + a resumed second end with the same weights,
    chains and metrics."""
    # save_top_k=-1: Lightning 2.6 rewrites last.ckpt only at steps where it also saves a top-k
    # checkpoint, so with the default top-1 last.ckpt is the newest state only when the last
    # epoch was the best
    args = [*SMOKE, "data.binarize=dynamic", "model.objective.persistent=true", "callbacks.samples=null",
            *NO_EVAL, "seed=3", "callbacks.checkpoint.save_top_k=-1"]
    whole = smoke(tmp_path / "whole", *args, "trainer.max_epochs=2")
    # one epoch, then continued in the same folder (the checkpoint callback keeps its best)
    resumed = smoke(tmp_path / "resumed", *args, "trainer.max_epochs=1")
    smoke(resumed, *args, "trainer.max_epochs=2", f"ckpt_path={resumed / 'checkpoints' / 'last.ckpt'}")
    a, b = (torch.load(r / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
            for r in (whole, resumed))
    for key in ("W", "b", "c", "objective.chains"):
        assert torch.equal(a[key], b[key]), key
    sa, sb = (json.loads((r / "summary.json").read_text()) for r in (whole, resumed))
    for key in ("val/pseudo_loglik", "val/free_energy_gap", "test/loglik"):
        assert sa[key] == sb[key], key
