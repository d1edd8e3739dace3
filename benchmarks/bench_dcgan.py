"""The DCGAN preset against the textbook DCGAN loop, side by side in one process: FID after every
epoch and the wall time each needed to get there.

    nice -n 10 .venv/bin/python benchmarks/bench_dcgan.py          # 5 epochs, 10k samples
    nice -n 10 .venv/bin/python benchmarks/bench_dcgan.py --threads 1   # on a busy shared CPU
    .venv/bin/python benchmarks/bench_dcgan.py --epochs 1 --n 2000  # a quick look

The textbook loop (issue 10): G Linear(64, 128*7*7)-BN-ReLU-ConvT(128, 64)-BN-ReLU-ConvT(64, 1)-
tanh; D Conv(1, 64)-LReLU(0.2)-Conv(64, 128)-BN-LReLU-Linear; non-saturating loss, Adam 2e-4
betas (0.5, 0.999), batch 128, the fake batch D just judged reused for G's step (as in PyTorch's
DCGAN example). The preset is `genlab-train experiment=dcgan` run through genlab's own train(cfg),
with its per-epoch validation, checkpoints and loggers, except that the sample-quality callback and
the progress bar are off: this script measures FID for both contenders the same way.

Epochs alternate: after each preset epoch (its validation included) the preset's clock stops, the
textbook loop trains one epoch on the same training split in the same batch order, and both are
scored. So a change of the shared machine's load hits both sides alike; compare the curves at
equal wall time (the last columns), not the absolute seconds. FID, precision and recall: genlab's
sample_metrics with the genlab-fmnist-cnn extractor, N samples (fixed latents) against the first N
training images, as conf/metrics/fashion_mnist.yaml does. The measurement runs with the training
random state set aside, so it changes neither contender's training.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import open_dict
from torch import nn

from genlab.data import IndexBatches, build_datamodule
from genlab.metrics.fid import RealReference, sample_metrics
from genlab.sweep import register_resolvers
from genlab.train import train

warnings.filterwarnings("ignore")
CONF = Path(__file__).resolve().parents[1] / "conf"
EXTRACTOR = "genlab-fmnist-cnn"
METRICS = ["fid", "precision", "recall"]


class Textbook:
    """The textbook DCGAN loop (module docstring); images in [0, 1] outside, [-1, 1] inside."""

    def __init__(self, device: torch.device, seed: int, latent_dim: int = 64):
        torch.manual_seed(seed)
        self.g = nn.Sequential(
            nn.Linear(latent_dim, 128 * 7 * 7), nn.BatchNorm1d(128 * 7 * 7), nn.ReLU(),
            nn.Unflatten(1, (128, 7, 7)),
            nn.ConvTranspose2d(128, 64, 4, 2, 1), nn.BatchNorm2d(64), nn.ReLU(),
            nn.ConvTranspose2d(64, 1, 4, 2, 1), nn.Tanh()).to(device)
        self.d = nn.Sequential(
            nn.Conv2d(1, 64, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(64, 128, 4, 2, 1), nn.BatchNorm2d(128), nn.LeakyReLU(0.2),
            nn.Flatten(), nn.Linear(128 * 7 * 7, 1)).to(device)
        self.opt_g = torch.optim.Adam(self.g.parameters(), lr=2e-4, betas=(0.5, 0.999))
        self.opt_d = torch.optim.Adam(self.d.parameters(), lr=2e-4, betas=(0.5, 0.999))
        self.rng = torch.Generator(device).manual_seed(seed)
        self.latent_dim, self.device = latent_dim, device

    def train_epoch(self, batches) -> None:
        self.g.train()
        self.d.train()
        with torch.enable_grad():
            for x, _ in batches:
                real = 2 * x - 1
                z = torch.randn(len(x), self.latent_dim, device=self.device, generator=self.rng)
                fake = self.g(z)
                d_loss = F.softplus(-self.d(real)).mean() + F.softplus(self.d(fake.detach())).mean()
                self.opt_d.zero_grad(set_to_none=True)
                d_loss.backward()
                self.opt_d.step()
                g_loss = F.softplus(-self.d(fake)).mean()
                self.opt_g.zero_grad(set_to_none=True)
                g_loss.backward()
                self.opt_g.step()

    @torch.no_grad()
    def generate(self, n: int, z: torch.Tensor) -> torch.Tensor:
        return (self.g(z) + 1) / 2


class Clock:
    """Wall time that can be paused."""

    def __init__(self):
        self.total, self.since = 0.0, None

    def start(self):
        self.since = time.perf_counter()

    def stop(self) -> float:
        self.total += time.perf_counter() - self.since
        self.since = None
        return self.total


class Scorer:
    """FID, precision and recall of a generator from fixed latents, with the training random state
    set aside (torch-fidelity and batch norm in eval mode must not move either contender)."""

    def __init__(self, reference: RealReference, n: int, seed: int, latent_dim: int, cache_dir):
        self.reference, self.n, self.cache_dir = reference, n, cache_dir
        self.z = torch.randn(n, latent_dim, generator=torch.Generator().manual_seed(seed + 1))

    def __call__(self, generate, nets: list[nn.Module], device: torch.device) -> dict:
        modes = [m.training for m in nets]
        for m in nets:
            m.eval()
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            fake = torch.cat([generate(len(zb), zb.to(device)) for zb in self.z.split(500)])
            out = sample_metrics(fake, self.reference, EXTRACTOR, METRICS, cache_dir=self.cache_dir)
        for m, mode in zip(nets, modes, strict=True):
            m.train(mode)
        return out


SESSION: dict = {}  # train(cfg) builds callbacks from the config alone; SideBySide finds its state here


class SideBySide(pl.Callback):
    """After each preset epoch: stop the preset's clock, score it, train and score one textbook epoch."""

    def __init__(self):
        self.s = SESSION

    def on_train_start(self, trainer, pl_module):
        self.s["preset_clock"].start()

    def on_train_epoch_end(self, trainer, pl_module):
        s = self.s
        t_preset = s["preset_clock"].stop()
        device = pl_module.device
        preset = s["score"](pl_module.generate, [pl_module], device)
        if s["textbook"] is None:
            s["textbook"] = Textbook(device, s["seed"])
        tb, epoch = s["textbook"], trainer.current_epoch
        fetch, n = trainer.datamodule.fetcher("train")
        batches = IndexBatches(fetch, n, 128, shuffle=True, seed=s["seed"], epoch=lambda: epoch,
                               drop_last=True, device=device)
        clock = s["textbook_clock"]
        clock.start()
        tb.train_epoch(batches)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t_textbook = clock.stop()
        textbook = s["score"](tb.generate, [tb.g], device)
        s["rows"].append((epoch + 1, t_textbook, textbook, t_preset, preset))
        print_row(s["rows"][-1])
        s["preset_clock"].start()


def print_row(row) -> None:
    e, tt, t, tp, p = row
    print(f"{e:>5} | {tt:8.1f} {t['fid']:8.1f} {t['precision']:6.3f} {t['recall']:6.3f} | "
          f"{tp:8.1f} {p['fid']:8.1f} {p['precision']:6.3f} {p['recall']:6.3f}", flush=True)


def at_time(rows, which: int, t: float) -> float | None:
    """A contender's FID at wall time t, linear between its epochs; None outside its range."""
    points = [(r[which], r[which + 1]["fid"]) for r in rows]
    for (t0, f0), (t1, f1) in zip(points, points[1:], strict=False):
        if t0 <= t <= t1:
            return f0 + (f1 - f0) * (t - t0) / (t1 - t0)
    return points[-1][1] if abs(t - points[-1][0]) < 1e-9 else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--n", type=int, default=10_000, help="generated and real images for FID")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--root", default="data", help="data folder (paths.data_dir)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: torch's); on a shared, loaded CPU 1 avoids "
                        "threads spinning against each other")
    p.add_argument("overrides", nargs="*", help="extra genlab-train overrides for the preset")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    with tempfile.TemporaryDirectory() as out:
        overrides = ["experiment=dcgan", f"trainer.max_epochs={a.epochs}", f"seed={a.seed}",
                     f"paths.output_dir={out}", f"paths.data_dir={a.root}",
                     "callbacks.evaluation=null", "callbacks.progress=null",
                     "+trainer.enable_progress_bar=false", *a.overrides]
        register_resolvers()  # as genlab-train's setup() does before Hydra composes
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose("train", overrides=overrides)
        with open_dict(cfg):
            cfg.callbacks.side_by_side = {"_target_": f"{__name__}.SideBySide"}
        dm = build_datamodule(cfg.data)
        reference = RealReference.from_datamodule(dm, "train", a.n)
        SESSION.update(preset_clock=Clock(), textbook_clock=Clock(), textbook=None, seed=a.seed,
                       rows=[], score=Scorer(reference, a.n, a.seed, cfg.model.latent_dim,
                                             cfg.paths.cache_dir))
        print(f"DCGAN on Fashion-MNIST, {a.epochs} epochs, FID/precision/recall with {EXTRACTOR} "
              f"({a.n} samples vs the first {a.n} training images); seconds = training wall time")
        print(f"preset: genlab-train {' '.join(overrides[:3] + a.overrides)}; torch threads "
              f"{torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f}")
        print(f"{'epoch':>5} | {'textbook':^31} | {'genlab preset':^31}")
        print(f"{'':>5} | {'seconds':>8} {'FID':>8} {'prec':>6} {'recall':>6} | "
              f"{'seconds':>8} {'FID':>8} {'prec':>6} {'recall':>6}", flush=True)
        train(cfg)
    rows = SESSION["rows"]
    last = rows[-1]
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")
    print(f"preset / textbook wall time over {len(rows)} epochs: {last[3] / last[1]:.3f}")
    print("at equal wall time (the other's FID interpolated between its epochs; - = outside its run):")
    for r in rows:
        for name, t, fid, other in (("preset", r[3], r[4]["fid"], at_time(rows, 1, r[3])),
                                    ("textbook", r[1], r[2]["fid"], at_time(rows, 3, r[1]))):
            shown = f"{other:8.1f}" if other is not None else f"{'-':>8}"
            print(f"  epoch {r[0]} of the {name:<8} at {t:8.1f} s: its FID {fid:8.1f}, the other's {shown}")


if __name__ == "__main__":
    main()
