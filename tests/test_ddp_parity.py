"""A DDP evaluation gives the numbers of a single-process one (issue 8).

Each validation and test image draws its evaluation noise from a generator keyed by its index in
the split (genlab.seeding.ExampleNoise), the evaluation shards hold every image once (no padding)
and the means are float64 sums and counts over all processes, so two gloo processes, each with
about half of the images in other batches, report what one process reports.
"""

from __future__ import annotations

import pytest
from conftest import NO_EVAL, run_cli

from genlab import runs

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
    # (one process with another data.eval_batch_size differs by as much, about 2e-6 nats here)
    assert {k: ddp[k] for k in keys} == {k: pytest.approx(single[k], rel=1e-6) for k in keys}
