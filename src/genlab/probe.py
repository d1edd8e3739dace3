"""The shortcut probe: can cheap image statistics tell two sets of images apart?

A discriminator asked to separate clean from degraded images (or real from generated ones) may
learn the task from a shortcut, a global statistic such as the noise level or the histogram,
instead of from image content. The probe measures how much such shortcuts give away: it fits a
logistic regression on a handful of per-image statistics and reports held-out accuracy. 0.5 means
the statistics see nothing; near 1 means a discriminator can win without looking at shapes. The
fit itself is genlab.metrics.probe.probe_accuracy; this module is the command and its data.

    python -m genlab.probe --data digits --corruption all --n 1000
"""

from __future__ import annotations

import torch
from torch import Tensor

from genlab.metrics.image_stats import HIST_BINS, image_statistics  # noqa: F401 (re-exported)
from genlab.metrics.probe import probe_accuracy

# The levels of conf/corruption/<kind>.yaml, used when --level is not given (tests/test_probe.py
# checks that they agree with the configs).
DEFAULT_LEVELS = {"gaussian": 0.1, "masking": 0.25, "salt_pepper": 0.1, "blur": 1.0, "rotate_crop": 90.0}


def clean_vs_degraded(images: Tensor, kind: str, level: float, seed: int = 0) -> float:
    """Probe accuracy for clean vs degraded, with the images split into two disjoint halves.

    Disjoint halves make the probe compare distributions (as a discriminator does), never an
    image with its own degraded copy.
    """
    from genlab.corruption import Corruption

    half = len(images) // 2
    clean, to_degrade = images[:half], images[half : 2 * half]
    degraded = Corruption(kind, level)(to_degrade, generator=torch.Generator().manual_seed(seed))
    return probe_accuracy(clean, degraded, seed=seed)


def load_images(data: str, n: int, root: str = "data") -> Tensor:
    """The first n training images of a genlab data source, float in [0, 1]."""
    from genlab.data import build_datamodule

    # no validation split: the probe reads the first n images of all the training images
    dm = build_datamodule({"name": data, "root": root, "val_size": 0}, key="--data")
    dm.setup()
    return dm.images("train", n)


def main(argv: list[str] | None = None) -> None:
    from genlab.config import ArgumentParser, ConfigError, one_line
    from genlab.corruption import Corruption
    from genlab.data import DATASETS

    p = ArgumentParser(prog="genlab-probe", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", choices=list(DATASETS), default="fashion_mnist")
    p.add_argument("--corruption", choices=[*DEFAULT_LEVELS, "all"], default="all")
    p.add_argument("--level", type=float, default=None,
                   help="the corruption's level (units per kind: see genlab.corruption); "
                        "default: the level of conf/corruption/<kind>.yaml")
    p.add_argument("--n", type=int, default=2000, help="images used: half clean, half degraded")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--root", default="data", help="data folder (Fashion-MNIST)")
    args = p.parse_args(argv)
    if args.corruption == "all" and args.level is not None:
        p.error("--level applies to one corruption; give --corruption too")
    if args.n < 20:  # the held-out quarter needs a few images of each class
        p.error(f"--n {args.n} is invalid; allowed: an integer >= 20")
    if args.seed < 0:
        p.error(f"--seed {args.seed} is invalid; allowed: an integer >= 0")

    kinds = list(DEFAULT_LEVELS) if args.corruption == "all" else [args.corruption]
    levels = {k: DEFAULT_LEVELS[k] if args.level is None else args.level for k in kinds}
    try:  # a level outside the corruption's range fails before any data is read
        for kind, level in levels.items():
            Corruption(kind, level)
    except ConfigError as e:
        p.error(f"--level {args.level}: {one_line(e)}")
    try:
        images = load_images(args.data, args.n, args.root)
        print(f"shortcut probe on {args.data}: {len(images) // 2} clean vs {len(images) // 2} "
              f"degraded images, held-out accuracy (0.5 = chance)")
        for kind, level in levels.items():
            acc = clean_vs_degraded(images, kind, level, seed=args.seed)
            print(f"  {kind:<12} level={level:<6g} accuracy={acc:.3f}")
    except FileNotFoundError as e:  # no data under --root, no Debian package, no network
        p.exit(2, f"genlab-probe: {one_line(e)}\n")


if __name__ == "__main__":
    main()
