"""Evaluation cost: FID with the domain extractor, and the test log-likelihood estimate.

    make bench      # or: .venv/bin/python benchmarks/bench_metrics.py --rounds 3

1. sample_metrics on 10,000 generated Fashion-MNIST images against the first 10,000 training
   images with genlab-fmnist-cnn: cold (an empty cache, so the real features are computed too)
   and with the real statistics cached; FID alone, and the evaluation callback's default set
   (fid, kid, precision, recall). Generating the 10,000 images is timed on its own line.
2. VAE.log_likelihood_estimate throughput in images/s at K=1000 and K=100 importance samples, for
   the quickstart architecture (conf/experiment/quickstart.yaml). The model is untrained: speed
   does not depend on the weights.
Each timing is the median over --rounds; the machine's load average is printed with the table,
because on a shared machine it moves every number.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from genlab.data import FashionMNISTDataModule
from genlab.metrics.fid import RealReference, sample_metrics
from genlab.sweep import register_resolvers

CONF = Path(__file__).resolve().parents[1] / "conf"
EXTRACTOR = "genlab-fmnist-cnn"
DEFAULT_SET = ["fid", "kid", "precision", "recall"]  # conf/metrics/fashion_mnist.yaml sample_quality.which


def quickstart_vae(image_shape):
    """The quickstart's VAE, built from the real config so the benchmark follows it."""
    register_resolvers()  # as genlab-train's setup() does before Hydra composes
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=quickstart", "paths.output_dir=."])
    return instantiate(cfg.model, image_shape=list(image_shape), _convert_="all").eval()


def generate(vae, n: int, batch: int = 500):
    return torch.cat([vae.generate(min(batch, n - i)) for i in range(0, n, batch)])


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - start, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--n", type=int, default=10_000, help="generated and real images for FID")
    p.add_argument("--loglik-images", type=int, default=64, help="images per log-likelihood timing")
    p.add_argument("--root", default="data")
    a = p.parse_args()
    torch.manual_seed(0)
    dm = FashionMNISTDataModule(root=a.root, download=False)
    dm.setup()
    vae = quickstart_vae(dm.image_shape)
    load_before = os.getloadavg()

    rows: dict[str, list[float]] = {}

    def add(name: str, seconds: float) -> None:
        rows.setdefault(name, []).append(seconds)

    for _ in range(a.rounds):
        seconds, fake = timed(generate, vae, a.n)
        add(f"generate {a.n} samples (quickstart VAE)", seconds)
        with tempfile.TemporaryDirectory() as cache:
            # a fresh reference object too, so nothing of the real images is held from before
            ref = RealReference.from_datamodule(dm, "train", a.n)
            add("FID cold (real features computed)",
                timed(sample_metrics, fake, ref, EXTRACTOR, ["fid"], cache_dir=cache)[0])
            add("FID, real statistics cached",
                timed(sample_metrics, fake, ref, EXTRACTOR, ["fid"], cache_dir=cache)[0])
            sample_metrics(fake, ref, EXTRACTOR, DEFAULT_SET, cache_dir=cache)  # caches real features
            add("fid+kid+precision+recall, cached",
                timed(sample_metrics, fake, ref, EXTRACTOR, DEFAULT_SET, cache_dir=cache)[0])

    x = dm.images("test", a.loglik_images)
    rates = {}
    for k in (1000, 100):
        vae.log_likelihood_estimate(x[:8], k)  # warm-up
        times = [timed(vae.log_likelihood_estimate, x, k)[0] for _ in range(a.rounds)]
        rates[k] = len(x) / statistics.median(times)

    print(f"\n{a.rounds} rounds (median), torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs, load average before {load_before[0]:.2f}, "
          f"after {os.getloadavg()[0]:.2f}")
    print(f"{f'FID, {EXTRACTOR}, {a.n} fake vs {a.n} real':<48} {'seconds':>10}")
    for name, seconds in rows.items():
        print(f"  {name:<46} {statistics.median(seconds):>10.2f}")
    print(f"{'log-likelihood estimate (quickstart VAE)':<48} {'images/s':>10}")
    for k, rate in rates.items():
        print(f"  {f'K={k} importance samples':<46} {rate:>10.1f}")


if __name__ == "__main__":
    main()
