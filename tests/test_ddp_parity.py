"""A DDP evaluation gives the numbers of a single-process one (issue 8).

Each validation and test image draws its evaluation noise from a generator keyed by its index in
the split (genlab.seeding.ExampleNoise), the evaluation shards hold every image once (no padding)
and the means are float64 sums and counts over all processes, so two gloo processes, each with
about half of the images in other batches, report what one process reports.
"""

from __future__ import annotations

import pytest
import torch
from conftest import NO_EVAL, run_cli

from genlab import runs
from genlab.corruption import Corruption
from genlab.models.rbm import RBM
from genlab.models.vae import VAE
from genlab.seeding import ExampleNoise

# an odd number of validation and test images (151 and the digits' 297), so the two shards differ
# in length, and batches that split them differently than one process does
DATA = ["data=digits", "data.limit=null", "data.val_size=151", "data.eval_batch_size=64",
        "trainer.limit_val_batches=1.0", "trainer.limit_test_batches=1.0", "trainer.max_epochs=1"]


def test_ddp_evaluation_of_a_checkpoint_equals_the_single_process_one(smoke, tmp_path):
    """One epoch trained in one process; its best checkpoint evaluated again by genlab-train with
    trainer=ddp_cpu (resumed at the end of its only epoch, so it trains nothing) gives the same
    val/* and test/* values: ELBO, its terms, and the importance-sampled test/loglik."""
    single = runs.read_summary(smoke(tmp_path / "single", *DATA, *NO_EVAL))
    assert single["status"] == "ok"

    run_cli("debug=smoke", "logger=csv", *DATA, *NO_EVAL, "trainer=ddp_cpu",
            f"ckpt_path={single['best_checkpoint']}", f"paths.log_dir={tmp_path / 'ddp'}",
            cwd=tmp_path)
    (run,) = runs.find_runs(tmp_path / "ddp")
    ddp = runs.read_summary(run)
    assert ddp["status"] == "ok" and ddp["global_step"] == single["global_step"]

    keys = sorted(k for k in single if k.startswith(("val/", "test/")))
    assert {"val/elbo", "test/elbo", "test/loglik"} <= set(keys)
    assert sorted(k for k in ddp if k.startswith(("val/", "test/"))) == keys
    # equal up to the last bits of float32 arithmetic, which moves with the batch an image is in
    # (one process with another data.eval_batch_size differs by as much, a few 1e-6 nats here)
    assert {k: ddp[k] for k in keys} == {k: pytest.approx(single[k], rel=1e-6) for k in keys}


def _as_two_shards(fn, n: int = 11) -> tuple[torch.Tensor, torch.Tensor]:
    """fn(positions, noise) on all n images at once, and on the two DDP shards (even and odd
    positions, in batches of other sizes) put back in order."""
    index = torch.arange(n)
    whole = fn(index, ExampleNoise(3, "val", index))
    parts = [fn(i, ExampleNoise(3, "val", i)) for i in (index[0::2], index[1::2])]
    return whole, torch.cat(parts)[torch.cat([index[0::2], index[1::2]]).argsort()]


@pytest.mark.parametrize("spec", [
    {"kind": "gaussian", "level": 0.2}, {"kind": "masking", "level_range": [0.1, 0.6]},
    {"kind": "salt_pepper", "level": 0.3}, {"kind": "rotate_crop", "level": 40}])
def test_an_images_evaluation_corruption_does_not_depend_on_its_batch(spec):
    """What the DAE, the instance-noise GAN and the restoration GAN draw at validation."""
    x = torch.rand(11, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    corruption = Corruption(**spec)
    whole, sharded = _as_two_shards(lambda i, g: corruption(x[i], generator=g))
    assert torch.equal(whole, sharded) and not torch.equal(whole, x)


def test_an_images_vae_and_rbm_evaluation_noise_does_not_depend_on_its_batch():
    torch.manual_seed(0)
    x = torch.rand(11, 1, 8, 8)
    vae = VAE((1, 8, 8), latent_dim=3, net={"name": "conv", "base_channels": 8}, loglik_chunk=40).eval()
    mu = torch.zeros(11, 3)
    assert torch.equal(*_as_two_shards(lambda i, g: vae.unit_noise(mu[i], None, g)))  # the ELBO's
    # k importance samples [k, B, D], and the estimate over them in chunks of 40 // B images
    assert torch.equal(*_as_two_shards(lambda i, g: vae.unit_noise(mu[i], 7, g).transpose(0, 1)))
    with torch.no_grad():
        loglik = _as_two_shards(lambda i, g: vae.log_likelihood_estimate(x[i], 7, g))
    assert torch.allclose(*loglik, rtol=0, atol=1e-5)  # float32 arithmetic in batches of 11, 6, 5
    rbm = RBM((1, 8, 8), hidden=5)
    v = (x > 0.5).float()
    with torch.no_grad():
        assert torch.allclose(*_as_two_shards(lambda i, g: rbm.pseudo_loglik(v[i], g)), atol=1e-5)
