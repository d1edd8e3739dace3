"""genlab-sample: images from a checkpoint.

    genlab-sample ckpt=PATH n=64 out=FILE.png                  # a grid of n samples
    genlab-sample ckpt=PATH mode=interpolate n=8 steps=10 out=FILE.png
    genlab-sample ckpt=PATH mode=reconstruct n=32 out=FILE.png
    genlab-sample ckpt=PATH mode=traversal unit=orientation n=8 steps=10 out=FILE.png
    genlab-sample ckpt=PATH class=3 n=16 out=FILE.png              # n samples of class 3
    genlab-sample ckpt=PATH mode=classes n=8 out=FILE.png          # n samples of every class, a row each

Every family samples from its prior (`prior`); the others are its own `sample_modes()`: the VAE's
`interpolate` and `reconstruct`, the DAE's `chain`, the restoration GAN's `restore`. VAEs also
have `traversal`: n encoded test images (rows), each with one latent unit swept over `steps`
values and the others fixed; `unit` is a named factor of model=named_vae, a latent index, or `all`
(one row per latent unit for each image; genlab.models.named.sweeps). Modes that start from real
test images read the data source from the checkpoint. A class-conditional model (model=cvae,
model=cdcgan: genlab.capabilities.ClassConditional) also takes `class` (its prior samples all of
that class; without it they cycle through the classes) and has `classes`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torchvision.utils import save_image

from genlab.capabilities import ClassConditional
from genlab.config import ConfigError
from genlab.data import build_datamodule
from genlab.models import VAE, load_model
from genlab.models.conditional import check_labels, class_grid_labels
from genlab.models.named import sweeps, traverse
from genlab.runs import RunReadError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
DEFAULTS = {"ckpt": None, "n": "64", "out": "samples.png", "mode": "prior", "steps": "10",
            "seed": "0", "device": "cpu", "unit": "", "class": ""}


def parse_args(argv: list[str]) -> dict[str, str]:
    args = dict(DEFAULTS)
    for a in argv:
        key, sep, value = a.partition("=")
        if not sep or key not in DEFAULTS:
            raise ConfigError(f"bad argument {a!r}; use key=value with key one of: "
                              f"{', '.join(DEFAULTS)}")
        args[key] = value
    if not args["ckpt"]:
        raise ConfigError("ckpt=PATH is required")
    if args["class"] and not args["class"].isdigit():
        raise ConfigError(f"class={args['class']!r} is invalid; allowed: a class index (an integer >= 0)")
    for key in ("n", "steps", "seed"):
        if not args[key].isdigit() or (key != "seed" and int(args[key]) <= 0):
            raise ConfigError(f"{key}={args[key]!r} is invalid; allowed: "
                              f"{'an integer >= 0' if key == 'seed' else 'a positive integer'}")
    out = Path(args["out"])
    if out.suffix.lower() not in IMAGE_SUFFIXES or out.is_dir():
        raise ConfigError(f"out={args['out']!r} is invalid; allowed: an image file name ending in "
                          f"{' | '.join(IMAGE_SUFFIXES)}")
    try:
        torch.device(args["device"])
    except RuntimeError:
        raise ConfigError(f"device={args['device']!r} is invalid; allowed: cpu | cuda | "
                          "cuda:N | mps") from None
    if args["device"].startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={args['device']!r} is invalid here: no CUDA device; allowed: cpu")
    return args


def real_images(ckpt, n: int, split: str = "test") -> torch.Tensor:
    """The first n images of the checkpoint's data source, rebuilt by registry name."""
    if ckpt.data is None:
        raise ConfigError("this checkpoint records no data source to take real images from")
    dm = build_datamodule({"name": ckpt.data, **ckpt.data_kwargs}, key="the checkpoint's data")
    dm.setup("test")
    return dm.images(split, n)


def sample(args: dict[str, str]) -> Path:
    torch.manual_seed(int(args["seed"]))
    model, ckpt = load_model(args["ckpt"], device=args["device"])
    n, steps, mode = int(args["n"]), int(args["steps"]), args["mode"]
    modes = {"prior": lambda: model.generate(n),
             **model.sample_modes(n, steps, lambda k: real_images(ckpt, k).to(model.device))}
    if isinstance(model, VAE) and not isinstance(model, ClassConditional):  # encodes images alone
        def traversal():
            plan = sweeps(model, args["unit"], steps)  # a bad unit fails before the data
            x = real_images(ckpt, n).to(model.device)
            return torch.cat([traverse(model, x[i:i + 1], units, values)
                              for i in range(n) for units, values in plan])

        modes["traversal"] = traversal
    if isinstance(model, ClassConditional):
        modes["classes"] = lambda: model.generate_class(class_grid_labels(model.num_classes, n))
        if args["class"]:
            label = check_labels(torch.tensor([int(args["class"])]), model.num_classes)
            modes["prior"] = lambda: model.generate_class(label.repeat(n))
    elif args["class"]:
        raise ConfigError(f"class={args['class']} is invalid for this {type(model).__name__}: it is not "
                          "class-conditional; allowed: a checkpoint of model=cvae or model=cdcgan")
    if mode not in modes:
        raise ConfigError(f"mode={mode!r} is invalid for {type(model).__name__}; "
                          f"allowed: {' | '.join(modes)}")
    with torch.no_grad():
        images = modes[mode]().float().cpu().clamp(0, 1)
    out = Path(args["out"])
    rows_of_steps = mode in ("interpolate", "traversal") or mode.startswith("chain")
    nrow = steps if rows_of_steps else n if mode == "classes" else max(1, int(len(images) ** 0.5))
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        save_image(images, out, nrow=nrow, padding=2)
    except OSError as e:
        raise ConfigError(f"out={args['out']!r}: cannot write it ({e.strerror or e})") from None
    return out


def main(argv: list[str] | None = None) -> None:
    """User errors (arguments, an unreadable or foreign checkpoint) end with one line on stderr
    and exit code 2, as every genlab command does."""
    try:
        out = sample(parse_args(sys.argv[1:] if argv is None else argv))
    except (ConfigError, RunReadError) as e:
        print(f"genlab-sample: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
