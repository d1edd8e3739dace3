"""Train (or check) a genlab domain feature extractor and ship its weights.

    python -m genlab.metrics.train_extractor --data fashion_mnist            # train, test, save
    python -m genlab.metrics.train_extractor --data fashion_mnist --eval-only --sanity

Training draws random batches from the data module's full training split (val_size=0), with Adam
and a cosine learning-rate decay, then prints the test accuracy of every head and writes
src/genlab/weights/<extractor>.pt (or --out): the state dict plus the accuracy, the command and
the torch version, loadable with torch.load(weights_only=True).

--sanity prints the degradation ladder, FIDs against the first n training images: n test images as
they are (the floor), with N(0, s^2) pixel noise (clipped) for each s in NOISE_LADDER, and blurred
by a Gaussian of each sigma in BLUR_LADDER (px). The floor should be far below the rest, and the
FID should grow along each ladder (tested for Fashion-MNIST and MNIST).
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from genlab.data import DATASETS
from genlab.metrics.extractors import DOMAIN, DomainCNN, domain_weights_path, extractor_image_shape

# steps and batch size per dataset: a few epochs of Fashion-MNIST, many passes over the small
# digits set, and ~0.5 "epoch" of the 737k dSprites grid (neighbouring images are near-identical);
# and half Fashion-MNIST's steps for the easier MNIST (~4 epochs; a few minutes on a CPU)
DEFAULTS = {"fashion_mnist": (4000, 128), "digits": (1500, 64), "dsprites": (3000, 64),
            "mnist": (2000, 128)}
NOISE_LADDER = (0.05, 0.1, 0.2)  # std of the pixel noise, on images in [0, 1]
BLUR_LADDER = (0.5, 1.0, 2.0)  # sigma of the Gaussian blur, in pixels


def make_datamodule(data: str, root: str = "data"):
    from genlab.data import build_datamodule

    return build_datamodule({"name": data, "root": root, "val_size": 0}, key="--data")


def targets(labels: Tensor, name: str) -> Tensor:
    """Data module labels -> class targets [B, heads] for the extractor `name`."""
    cols = DOMAIN[name]["label_columns"]
    return labels.view(-1, 1).long() if cols is None else labels[:, list(cols)].long()


def evaluate(net: DomainCNN, dm, name: str, split: str = "test", batch_size: int = 1000) -> list[float]:
    """Accuracy of each head on a split, in [0, 1]."""
    fetch, n = dm.fetcher(split)
    device = next(net.parameters()).device
    correct = torch.zeros(len(net.heads))
    net.eval()
    with torch.no_grad():
        for i in range(0, n, batch_size):
            x, y = fetch(torch.arange(i, min(i + batch_size, n)))
            _, logits = net(x.to(device).float() / 255.0)
            t = targets(y, name).to(device)
            for h, lg in enumerate(net.split_logits(logits)):
                correct[h] += (lg.argmax(1) == t[:, h]).sum().cpu()
    return (correct / n).tolist()


def train(name: str, dm, steps: int, batch_size: int, lr: float = 2e-3, seed: int = 0,
          device: str = "cpu", log_every: int = 500) -> DomainCNN:
    torch.manual_seed(seed)
    spec = DOMAIN[name]
    net = DomainCNN(extractor_image_shape(name), spec["heads"], downsample=spec["downsample"]).to(device)

    def loss_fn(x: Tensor, y: Tensor) -> Tensor:
        _, logits = net(x)
        t = targets(y, name).to(device)
        return sum(F.cross_entropy(lg, t[:, h]) for h, lg in enumerate(net.split_logits(logits)))

    return fit(net, dm, loss_fn, steps, batch_size, lr, seed, device, log_every)


def fit(net: torch.nn.Module, dm, loss_fn, steps: int, batch_size: int, lr: float = 2e-3, seed: int = 0,
        device: str = "cpu", log_every: int = 500):
    """Adam with a cosine decay over `steps` random batches of the training split (drawn from a
    generator seeded with `seed`); loss_fn(x float [B, C, H, W] in [0, 1] on `device`, labels)."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    fetch, n = dm.fetcher("train")
    net.train()
    t0 = time.time()
    for step in range(steps):
        x, y = fetch(torch.randint(n, (batch_size,), generator=g))
        loss = loss_fn(x.to(device).float() / 255.0, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % log_every == 0 or step + 1 == steps:
            print(f"step {step + 1}/{steps}  loss {loss.item():.4f}  ({time.time() - t0:.0f} s)", flush=True)
    return net.eval()


def save(net: DomainCNN, path: Path, accuracy: list[float], command: str) -> None:
    save_weights(net, path, command, test_accuracy=[round(a, 4) for a in accuracy])


def save_weights(net: torch.nn.Module, path: Path, command: str, **scores) -> None:
    """The state dict with `scores` (its measured quality), the command and the torch version."""
    blob = {
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()},
        **scores,
        "command": command,
        "torch_version": str(torch.__version__),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(blob, tmp)
    tmp.replace(path)
    print(f"saved {path} ({path.stat().st_size / 1e6:.2f} MB)")


def sanity_fids(name: str, dm, n: int = 10_000, seed: int = 0, noise=NOISE_LADDER,
                blur=BLUR_LADDER) -> dict[str, float]:
    """FIDs of n test images against the first n training images: as they are ("floor"), with
    N(0, s^2) pixel noise, clipped ("noise s", one noise draw scaled to each s), and blurred by a
    Gaussian of sigma s px and kernel width 2 ceil(3 s) + 1 ("blur s")."""
    from torchvision.transforms.functional import gaussian_blur

    from genlab.metrics.fid import RealReference, sample_metrics

    real = RealReference.from_datamodule(dm, "train", n)
    test = dm.images("test", n)
    eps = torch.randn(test.shape, generator=torch.Generator().manual_seed(seed))
    variants = {"floor": test}
    variants |= {f"noise {s:g}": (test + s * eps).clamp(0, 1) for s in noise}
    variants |= {f"blur {s:g}": gaussian_blur(test, kernel_size=2 * math.ceil(3 * s) + 1, sigma=s)
                 for s in blur}
    return {k: sample_metrics(v, real, name, metrics=("fid",))["fid"] for k, v in variants.items()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # the datasets whose default FID extractor is a genlab domain CNN (genlab.data.DATASETS)
    p.add_argument("--data", required=True,
                   choices=sorted(n for n, d in DATASETS.items() if d.fid_extractor in DOMAIN))
    p.add_argument("--root", default="data", help="data root (as data.root)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=None, help="weights file (default: the shipped one)")
    p.add_argument("--eval-only", action="store_true", help="test the existing weights, train nothing")
    p.add_argument("--sanity", action="store_true", help="also print the degradation ladder's FIDs")
    p.add_argument("--sanity-n", type=int, default=10_000)
    args = p.parse_args(argv)

    name = DATASETS[args.data].fid_extractor
    out = Path(args.out) if args.out else domain_weights_path(name)
    dm = make_datamodule(args.data, args.root)
    dm.setup()
    if args.eval_only:
        from genlab.metrics.extractors import load_domain_cnn

        net = load_domain_cnn(name, out).to(args.device)
    else:
        steps, batch_size = DEFAULTS[args.data]
        net = train(name, dm, args.steps or steps, args.batch_size or batch_size, args.lr, args.seed,
                    args.device)
    accuracy = evaluate(net, dm, name)
    print(f"{name} test accuracy per head: " + ", ".join(f"{a:.4f}" for a in accuracy))
    if not args.eval_only:
        argv_used = sys.argv[1:] if argv is None else argv
        save(net, out, accuracy, "python -m genlab.metrics.train_extractor " + shlex.join(argv_used))
    if args.sanity:
        if out != domain_weights_path(name):
            print("--sanity measures the shipped weights (sample_metrics loads those)")
        for k, v in sanity_fids(name, dm, args.sanity_n).items():
            print(f"FID {k:10s} {v:10.3f}")


if __name__ == "__main__":
    main()
