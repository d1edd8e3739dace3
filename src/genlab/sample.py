"""genlab-sample: images from a checkpoint.

    genlab-sample ckpt=PATH n=64 out=FILE.png                  # a grid of n samples
    genlab-sample ckpt=PATH mode=interpolate n=8 steps=10 out=FILE.png
    genlab-sample ckpt=PATH mode=reconstruct n=32 out=FILE.png

Every family samples from its prior (`prior`); the others are its own `sample_modes()`: the VAE's
`interpolate` and `reconstruct`, the DAE's `chain`, the restoration GAN's `restore`. Modes that
start from real test images read the data source from the checkpoint.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import torch
from torchvision.utils import save_image

from genlab.runs import RunReadError, read_checkpoint

DEFAULTS = {"ckpt": None, "n": "64", "out": "samples.png", "mode": "prior", "steps": "10",
            "seed": "0", "device": "cpu"}


def parse_args(argv: list[str]) -> dict[str, str]:
    args = dict(DEFAULTS)
    for a in argv:
        key, sep, value = a.partition("=")
        if not sep or key not in DEFAULTS:
            raise SystemExit(f"genlab-sample: bad argument {a!r}; use key=value with key one of: "
                             f"{', '.join(DEFAULTS)}")
        args[key] = value
    if not args["ckpt"]:
        raise SystemExit("genlab-sample: ckpt=PATH is required")
    for key in ("n", "steps", "seed"):
        if not args[key].isdigit() or (key != "seed" and int(args[key]) <= 0):
            raise SystemExit(f"genlab-sample: {key}={args[key]!r} is invalid; allowed: a positive integer")
    return args


def load_model(path: str, device: str = "cpu"):
    """Rebuild a genlab model from its checkpoint alone. Returns (model, the checkpoint's data config)."""
    ckpt = read_checkpoint(path)
    meta = ckpt.get("genlab")
    if not meta:
        raise RunReadError(f"ckpt={path!r}: not written by genlab-train (no 'genlab' entry)")
    module, _, name = meta["model_class"].rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    model = cls(**ckpt["hyper_parameters"])
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device).eval(), meta.get("data")


def real_images(data_config: dict | None, n: int, split: str = "test") -> torch.Tensor:
    from hydra.utils import instantiate

    if not data_config:
        raise SystemExit("genlab-sample: this checkpoint records no data source to encode images from")
    dm = instantiate(data_config)
    dm.setup("test")
    return dm.images(split, n)


def sample(args: dict[str, str]) -> Path:
    torch.manual_seed(int(args["seed"]))
    model, data = load_model(args["ckpt"], args["device"])
    n, steps, mode = int(args["n"]), int(args["steps"]), args["mode"]
    modes = {"prior": lambda: model.generate(n),
             **model.sample_modes(n, steps, lambda k: real_images(data, k).to(model.device))}
    if mode not in modes:
        raise SystemExit(f"genlab-sample: mode={mode!r} is invalid for {type(model).__name__}; "
                         f"allowed: {' | '.join(modes)}")
    with torch.no_grad():
        images = modes[mode]().float().cpu().clamp(0, 1)
    out = Path(args["out"])
    out.parent.mkdir(parents=True, exist_ok=True)
    nrow = steps if mode == "interpolate" or mode.startswith("chain") else max(1, int(len(images) ** 0.5))
    save_image(images, out, nrow=nrow, padding=2)
    return out


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        out = sample(args)
    except RunReadError as e:
        raise SystemExit(f"genlab-sample: {e}") from None
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
