"""Training-step throughput of genlab against plain PyTorch, measured alternately in one process.

    make bench                      # or: .venv/bin/python benchmarks/bench_train.py --rounds 5

1. genlab (Lightning, VAE module, CSV logger, progress bar, in-memory batches) against a plain
   PyTorch loop over the same model and batches: steps/s ratio, target >= 0.97.
2. In-memory index batching against torchvision's Dataset + ToTensor + DataLoader (0 and 2
   workers), for whole VAE training steps.
Each round runs every contender for the same number of steps; the ratio is the median over rounds
of per-round ratios, so drift of the machine's speed affects both sides alike.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import TQDMProgressBar
from pytorch_lightning.loggers import CSVLogger

from genlab.data import FashionMNISTDataModule, IndexBatches
from genlab.models.vae import VAE

warnings.filterwarnings("ignore")


class StepTimer(pl.Callback):
    """Wall time of the steps after `warmup`, excluding the Trainer's set-up and tear-down."""

    def __init__(self, warmup: int):
        self.warmup, self.start, self.end = warmup, None, None

    def on_train_batch_start(self, trainer, *_):
        if trainer.global_step == self.warmup:
            self.start = time.perf_counter()

    def on_train_end(self, trainer, *_):
        self.end = time.perf_counter()


def genlab_steps(dm, steps: int, warmup: int, precision: str) -> float:
    model = VAE(image_shape=dm.image_shape, loglik_samples=0)
    timer = StepTimer(warmup)
    with tempfile.TemporaryDirectory() as d:
        trainer = pl.Trainer(max_steps=steps + warmup, limit_val_batches=0, logger=CSVLogger(d, name=""),
                             callbacks=[timer, TQDMProgressBar(refresh_rate=20)],
                             enable_checkpointing=False, enable_model_summary=False,
                             log_every_n_steps=50, precision=precision, accelerator="cpu",
                             default_root_dir=d, use_distributed_sampler=False)
        trainer.fit(model, datamodule=dm)
    return steps / (timer.end - timer.start)


def plain_steps(batches, steps: int, warmup: int, precision: str) -> float:
    """A plain loop: the same model, loss and optimizer, with no framework around it."""
    model = VAE(image_shape=(1, 28, 28), loglik_samples=0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    it = iter(batches)
    t0 = None
    for i in range(steps + warmup):
        if i == warmup:
            t0 = time.perf_counter()
        try:
            x = next(it)[0]
        except StopIteration:
            it = iter(batches)
            x = next(it)[0]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
            t = model.elbo_terms(x)
            loss = -(t["recon"] - t["kl"]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps / (time.perf_counter() - t0)


def torchvision_loader(root: str, workers: int, batch_size: int):
    from torchvision import datasets, transforms

    ds = datasets.FashionMNIST(root, train=True, download=False, transform=transforms.ToTensor())
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers,
                                       drop_last=True, persistent_workers=workers > 0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    p.add_argument("--root", default="data")
    p.add_argument("--skip-loaders", action="store_true")
    a = p.parse_args()
    torch.manual_seed(0)
    dm = FashionMNISTDataModule(root=a.root, batch_size=128)
    dm.setup()
    fetch, n = dm.fetcher("train")
    in_memory = IndexBatches(fetch, n, 128, shuffle=True, drop_last=True)

    ratios, loader_ratios = [], {0: [], 2: []}
    loaders = {} if a.skip_loaders else {w: torchvision_loader(a.root, w, 128) for w in (0, 2)}
    for r in range(a.rounds):
        plain = plain_steps(in_memory, a.steps, a.warmup, a.precision)
        ours = genlab_steps(dm, a.steps, a.warmup, a.precision)
        ratios.append(ours / plain)
        line = f"round {r}: plain {plain:6.1f} steps/s, genlab {ours:6.1f} steps/s, ratio {ours / plain:.3f}"
        for w, loader in loaders.items():
            tv = plain_steps(loader, a.steps, a.warmup, a.precision)
            loader_ratios[w].append(tv / plain)
            line += f" | torchvision {w} workers {tv:6.1f} steps/s ({tv / plain:.2f}x)"
        print(line, flush=True)
    print(f"\nprecision {a.precision}, {a.rounds} rounds x {a.steps} steps, batch 128, "
          f"torch threads {torch.get_num_threads()}")
    print(f"genlab / plain PyTorch training-step throughput: {statistics.median(ratios):.3f} (median)")
    for w, rs in loader_ratios.items():
        if rs:
            print(f"torchvision Dataset+ToTensor+DataLoader ({w} workers) / in-memory batching: "
                  f"{statistics.median(rs):.3f} (median)")


if __name__ == "__main__":
    main()
