"""Training-step throughput of genlab against plain PyTorch, measured alternately in one process.

    make bench                      # or: .venv/bin/python benchmarks/bench_train.py --rounds 5
    .venv/bin/python benchmarks/bench_train.py --model dcgan --skip-loaders   # the DCGAN preset

1. genlab (Lightning, the VAE module or with --model dcgan the DCGAN preset's module, CSV logger,
   progress bar, in-memory batches) against a plain PyTorch loop over the same networks, loss and
   batches: steps/s ratio, target >= 0.97. A DCGAN step is one D and one G update.
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
import torch.nn.functional as F
from pytorch_lightning.callbacks import TQDMProgressBar
from pytorch_lightning.loggers import CSVLogger

from genlab.data import FashionMNISTDataModule, IndexBatches
from genlab.models.gan import DCGAN
from genlab.models.vae import VAE

warnings.filterwarnings("ignore")


class StepTimer(pl.Callback):
    """Wall time of the training steps (batches) after `warmup`, excluding the Trainer's set-up and
    tear-down. Batches, not trainer.global_step: a GAN makes two optimizer steps per batch."""

    def __init__(self, warmup: int):
        self.warmup, self.start, self.end, self.batches = warmup, None, None, 0

    def on_train_batch_start(self, trainer, *_):
        if self.batches == self.warmup:
            self.start = time.perf_counter()
        self.batches += 1

    def on_train_end(self, trainer, *_):
        self.end = time.perf_counter()


def make_model(name: str):
    """The VAE as `make bench` has always timed it, or the DCGAN preset (conf/model/dcgan.yaml)."""
    if name == "vae":
        return VAE(image_shape=(1, 28, 28), loglik_samples=0)
    return DCGAN(image_shape=(1, 28, 28), d_norm="batch")


def genlab_steps(dm, steps: int, warmup: int, precision: str, name: str = "vae") -> float:
    model = make_model(name)
    timer = StepTimer(warmup)
    with tempfile.TemporaryDirectory() as d:
        updates = 1 if name == "vae" else 2  # optimizer steps per batch (D and G)
        trainer = pl.Trainer(max_steps=updates * (steps + warmup), limit_val_batches=0, logger=CSVLogger(d, name=""),
                             callbacks=[timer, TQDMProgressBar(refresh_rate=20)],
                             enable_checkpointing=False, enable_model_summary=False,
                             log_every_n_steps=50, precision=precision, accelerator="cpu",
                             default_root_dir=d, use_distributed_sampler=False)
        trainer.fit(model, datamodule=dm)
    return steps / (timer.end - timer.start)


def plain_steps(batches, steps: int, warmup: int, precision: str, name: str = "vae") -> float:
    """A plain loop: the same networks, loss and optimizers, with no framework around it."""
    model = make_model(name)
    step = vae_step(model) if name == "vae" else gan_step(model)
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
            step(x)
    return steps / (time.perf_counter() - t0)


def vae_step(model):
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step(x):
        t = model.elbo_terms(x)
        loss = -(t["recon"] - t["kl"]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def gan_step(model):
    """The textbook non-saturating update with the preset's networks: one D step on the real batch
    and the fake batch, then one G step on the same fake batch."""
    g, d = model.generator, model.discriminator
    opt_d = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_g = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999))

    def step(x):
        fake = torch.tanh(g(torch.randn(len(x), 64)))  # in [-1, 1], D's scale
        d_loss = F.softplus(-d(2 * x - 1)).mean() + F.softplus(d(fake.detach())).mean()
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        g_loss = F.softplus(-d(fake)).mean()
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
    return step


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
    p.add_argument("--model", default="vae", choices=["vae", "dcgan"])
    a = p.parse_args()
    torch.manual_seed(0)
    dm = FashionMNISTDataModule(root=a.root, batch_size=128)
    dm.setup()
    fetch, n = dm.fetcher("train")
    in_memory = IndexBatches(fetch, n, 128, shuffle=True, drop_last=True)

    ratios, loader_ratios = [], {0: [], 2: []}
    loaders = {} if a.skip_loaders else {w: torchvision_loader(a.root, w, 128) for w in (0, 2)}
    for r in range(a.rounds):
        plain = plain_steps(in_memory, a.steps, a.warmup, a.precision, a.model)
        ours = genlab_steps(dm, a.steps, a.warmup, a.precision, a.model)
        ratios.append(ours / plain)
        line = f"round {r}: plain {plain:6.1f} steps/s, genlab {ours:6.1f} steps/s, ratio {ours / plain:.3f}"
        for w, loader in loaders.items():
            tv = plain_steps(loader, a.steps, a.warmup, a.precision)
            loader_ratios[w].append(tv / plain)
            line += f" | torchvision {w} workers {tv:6.1f} steps/s ({tv / plain:.2f}x)"
        print(line, flush=True)
    print(f"\nprecision {a.precision}, {a.rounds} rounds x {a.steps} steps, batch 128, "
          f"torch threads {torch.get_num_threads()}")
    print(f"genlab / plain PyTorch training-step throughput ({a.model}): {statistics.median(ratios):.3f} (median)")
    for w, rs in loader_ratios.items():
        if rs:
            print(f"torchvision Dataset+ToTensor+DataLoader ({w} workers) / in-memory batching: "
                  f"{statistics.median(rs):.3f} (median)")


if __name__ == "__main__":
    main()
