"""Reading dSprites' orientation back from an image: the regressor behind
val/<factor>_commanded_err_deg (genlab.callbacks.commanded), trained on real labelled dSprites and
kept apart from every model's training.

    python -m genlab.metrics.orientation                 # train, test, save the shipped weights
    python -m genlab.metrics.orientation --eval-only     # test the shipped weights

The network is genlab.metrics.extractors.DomainCNN (stride-2 convolutions, 64x64 -> 4x4, a 128-d
linear layer) with two heads: (cos phi, sin phi) of the orientation's phase, phi = 2 pi (theta mod
period) / period, the same circle as the named-factor coding (genlab.models.named.Circle), trained
with the squared error; and the shape's 3 logits (square, ellipse, heart), trained with cross
entropy, since the symmetry period, and so what an error of phi means in degrees of the image,
depends on the shape: 90 degrees for a square, 180 for an ellipse, 360 for a heart.

Read back: phi^ = atan2 of the phase head, the period that of the shape head's choice; an error is
|phi^ - phi| on the circle times period / (2 pi), in degrees of the image modulo the symmetry.
A reading that ignores the image (phi^ uniform) scores a quarter period, 22.5, 45 and 90 degrees,
52.5 on average over the three shapes.

Shipped weights (src/genlab/weights/genlab-dsprites-orientation.pt, 0.90 MB), made on this
project's shared 2-core CPU (OMP_NUM_THREADS=1, 317 s) by `python -m genlab.metrics.orientation
--device cpu` (4,000 steps of 64 images): on the 10,000 test images of data=dsprites (disjoint
from its training images) the mean absolute error is 9.44 degrees with the true shape's period and
9.45 with the shape read (against 52.5 for a guess), shape accuracy 0.9981; each also stored in
the file (`test_error_deg`, `test_error_deg_read_shape`, `test_shape_acc`). That error is the
floor of val/<factor>_commanded_err_deg.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from genlab.data.dsprites import SYMMETRY
from genlab.metrics.extractors import WEIGHTS_DIR, DomainCNN, ExtractorUnavailable
from genlab.metrics.train_extractor import fit, make_datamodule, save_weights
from genlab.models.named import wrapped

NAME = "genlab-dsprites-orientation"
IMAGE_SHAPE = (1, 64, 64)
HEADS = (2, 3)  # (cos phi, sin phi); shape logits
PERIODS = torch.tensor(SYMMETRY)  # by shape index
GUESS_DEG = float(sum(math.degrees(p) / 4 for p in SYMMETRY) / len(SYMMETRY))  # 52.5
STEPS, BATCH_SIZE = 4000, 64


def weights_path() -> Path:
    return WEIGHTS_DIR / f"{NAME}.pt"


def new_regressor() -> DomainCNN:
    return DomainCNN(IMAGE_SHAPE, HEADS, downsample="stride")


def load_regressor(path: str | Path | None = None) -> DomainCNN:
    """The shipped (or given) regressor, eval mode, on the CPU, without gradients."""
    path = Path(path) if path is not None else weights_path()
    if not path.is_file():
        raise ExtractorUnavailable(f"orientation regressor: weights file {path} is missing. Retrain it "
                                   "with\n  python -m genlab.metrics.orientation")
    with torch.random.fork_rng(devices=[]):  # its initial weights are overwritten: no draw counts
        net = new_regressor()
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["state_dict"])
    return net.eval().requires_grad_(False)


def phase_target(factors: Tensor) -> tuple[Tensor, Tensor]:
    """dSprites factor levels [B, 5] -> (the orientation's phase phi in [0, 2 pi), the period), [B]."""
    from genlab.data.dsprites import rotation

    theta, period = rotation(factors)
    return 2 * math.pi * torch.remainder(theta, period) / period, period


@torch.no_grad()
def read(net: DomainCNN, x: Tensor, batch_size: int = 500) -> tuple[Tensor, Tensor]:
    """Images [B, 1, 64, 64] (uint8, or float in [0, 1]) -> (the phase phi^ read [B], the period of
    the shape read [B]), on the CPU."""
    device = next(net.parameters()).device
    phases, periods = [], []
    for xb in x.split(batch_size):
        xb = xb.to(device).float() / (255.0 if xb.dtype == torch.uint8 else 1.0)
        code, shape = net.split_logits(net(xb)[1])
        phases.append(torch.atan2(code[:, 1], code[:, 0]).cpu())
        periods.append(PERIODS[shape.argmax(1).cpu()])
    return torch.cat(phases), torch.cat(periods)


def error_deg(phase: Tensor, phase_read: Tensor, period: Tensor) -> Tensor:
    """|phase_read - phase| on the circle, in degrees of the image for shapes of `period` [B]."""
    return torch.rad2deg(wrapped(phase_read - phase).abs() * period / (2 * math.pi))


def loss(net: DomainCNN, x: Tensor, factors: Tensor) -> Tensor:
    """Squared error of the phase code (summed over cos, sin) plus the shape's cross entropy."""
    code, shape = net.split_logits(net(x)[1])
    phi, _ = phase_target(factors.cpu())
    target = torch.stack([torch.cos(phi), torch.sin(phi)], 1).to(code)
    return (code - target).pow(2).sum(1).mean() + F.cross_entropy(shape, factors[:, 0].long().to(x.device))


def evaluate(net: DomainCNN, dm, split: str = "test", batch_size: int = 1000) -> dict[str, float]:
    """On every image of `split`: the mean error in degrees with the true shape's period
    (`error_deg`), with the period of the shape read (`error_deg_read_shape`, what the commanded
    evaluator does) and the shape accuracy."""
    fetch, n = dm.fetcher(split)
    err, err_read, correct = 0.0, 0.0, 0
    for i in range(0, n, batch_size):
        x, factors = fetch(torch.arange(i, min(i + batch_size, n)))
        factors = factors.cpu()
        phi, period = phase_target(factors)
        phi_read, period_read = read(net, x)
        err += error_deg(phi, phi_read, period).sum().item()
        err_read += error_deg(phi, phi_read, period_read).sum().item()
        correct += (period_read == period).sum().item()
    return {"error_deg": err / n, "error_deg_read_shape": err_read / n, "shape_acc": correct / n}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="data", help="data root (as data.root)")
    p.add_argument("--steps", type=int, default=STEPS)
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=None, help="weights file (default: the shipped one)")
    p.add_argument("--eval-only", action="store_true", help="test the existing weights, train nothing")
    args = p.parse_args(argv)

    out = Path(args.out) if args.out else weights_path()
    dm = make_datamodule("dsprites", args.root)
    dm.setup()
    if args.eval_only:
        net = load_regressor(out).to(args.device)
    else:
        torch.manual_seed(args.seed)
        net = new_regressor().to(args.device)
        fit(net, dm, lambda x, y: loss(net, x, y), args.steps, args.batch_size, args.lr, args.seed,
            args.device)
    scores = evaluate(net.eval(), dm)
    print(f"{NAME} on the test split: error {scores['error_deg']:.2f} deg (true shape's period), "
          f"{scores['error_deg_read_shape']:.2f} deg (shape read), shape accuracy "
          f"{scores['shape_acc']:.4f}; a guess scores {GUESS_DEG:.1f} deg")
    if not args.eval_only:
        argv_used = sys.argv[1:] if argv is None else argv
        save_weights(net, out, "python -m genlab.metrics.orientation " + shlex.join(argv_used),
                     test_error_deg=round(scores["error_deg"], 3),
                     test_error_deg_read_shape=round(scores["error_deg_read_shape"], 3),
                     test_shape_acc=round(scores["shape_acc"], 4))


if __name__ == "__main__":
    main()
