"""Training-step throughput of genlab against plain PyTorch, measured alternately in one process.

    make bench                                            # every case below, then bench_metrics.py
    .venv/bin/python benchmarks/bench_train.py --case mlp-b20-k1 --rounds 7
    .venv/bin/python benchmarks/bench_train.py --case dcgan --skip-loaders

Cases (`--case`, several allowed; default all but dcgan):
  conv-b128    the conv VAE of the quickstart (latent 16) at batch 128, grey Fashion-MNIST
  mlp-b20-k1   Burda et al.'s network (784-200-200-50, tanh) at their batch 20, the ELBO
  mlp-b20-k50  the same trained on the IWAE bound with k = 50
  mlp-b100-k1  the same at Kingma & Welling's batch 100
  dcgan        the DCGAN preset's module (one D and one G update per batch) against the
               textbook non-saturating loop with the same networks
The MLP cases train on dynamically binarised Fashion-MNIST, as the papers' MNIST.

1. genlab: the run genlab-train composes (conf/, `logger=csv`: every default callback, the
   divergence guard, the interrupt checkpoint, gradient noise, the progress bar, both checkpoint
   callbacks, the evaluation), trained by Lightning for a fixed number of steps without
   validation. Against it, plain loops over their own copies of the same module and batches:
   each calls the module's `training_step` and steps Adam by hand (the DCGAN case: the textbook
   update). One plain loop uses torch's default Adam (the single-tensor loop on a CPU), what a
   hand-written loop gets; the other the implementation genlab chose (`optim.impl=auto`), which
   leaves only the framework's own cost. The contenders are interleaved step by step (after each
   genlab step, one step of each plain loop, timed apart), so load that comes and goes on the
   machine hits all alike; a round's ratio is of the summed step times, the result the median
   over rounds.
2. conv-b128 also compares genlab's in-memory index batching with torchvision's Dataset +
   ToTensor + DataLoader (0 and 2 workers) for whole plain training steps, alternately
   (`--skip-loaders` leaves it out).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from genlab.compat import cuda_check_without_nvml, skip_empty_batch_hooks
from genlab.data import build_datamodule
from genlab.sweep import register_resolvers
from genlab.train import CONF_DIR, _build_all, build

warnings.filterwarnings("ignore")
clock = time.perf_counter  # --clock cpu: time.process_time
logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)

MLP = ["model/net=mlp", "model.net.hidden=[200,200]", "model.net.activation=tanh",
       "model.latent_dim=50", "data.binarize=dynamic"]
# case -> (overrides of genlab-train's config, batch size, steps per contender and round)
CASES = {
    "conv-b128": ([], 128, 150),
    "mlp-b20-k1": (MLP, 20, 600),
    "mlp-b20-k50": ([*MLP, "model/objective=iwae", "model.objective.k=50"], 20, 150),
    "mlp-b100-k1": (MLP, 100, 400),
    "dcgan": (["model=dcgan"], 64, 60),
}
DEFAULT_CASES = [c for c in CASES if c != "dcgan"]


class Interleaved(pl.Callback):
    """Runs one step of each plain contender after each of genlab's training steps, and times
    them apart: genlab's step is the time from one batch start to the next less the plain steps
    run in between. Load that comes and goes on the machine then hits every contender alike.
    Batches `warmup`+1 .. `warmup`+`steps` are timed (a GAN makes two optimizer steps a batch)."""

    def __init__(self, plain: dict, warmup: int, steps: int):
        self.plain, self.warmup, self.steps = plain, warmup, steps
        self.times = {"genlab": 0.0, **{name: 0.0 for name in plain}}
        self.batches, self.last, self.inside = 0, None, 0.0

    def on_train_batch_start(self, trainer, *_):
        now = clock()
        if self.last is not None and self.batches > self.warmup:
            self.times["genlab"] += now - self.last - self.inside
        self.last, self.inside = now, 0.0

    def on_train_batch_end(self, trainer, *_):
        self.batches += 1
        if self.batches > self.warmup + self.steps:
            return
        for name, (step, batches) in self.plain.items():
            t = clock()
            step(next(batches), self.batches)
            spent = clock() - t
            self.inside += spent
            if self.batches > self.warmup:
                self.times[name] += spent


def run_config(out: str, data_root: str, overrides: list[str]):
    """genlab-train's composed config, writing into `out`, with metrics.csv only."""
    register_resolvers()  # as genlab-train's setup() does before Hydra composes
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("train", overrides=[f"paths.output_dir={out}", f"paths.data_dir={data_root}",
                                           "logger=csv", *overrides])


def config(case: str, out: str, data_root: str):
    overrides, batch, _ = CASES[case]
    return run_config(out, data_root, [f"data.batch_size={batch}", "+trainer.limit_val_batches=0",
                                       "trainer.accelerator=cpu", *overrides])


def plain_contender(case: str, data_root: str, impl: str):
    """A plain loop's step over its own copy of the module and of the batches, with Adam's `impl`."""
    with tempfile.TemporaryDirectory() as d:
        cfg = config(case, d, data_root)
    dm = build_datamodule(cfg.data)
    dm.setup()
    model = build(cfg.model, image_shape=list(dm.image_shape), _convert_="all")
    model.optim = {**cfg.optim, "impl": impl}
    step = gan_step(model) if case == "dcgan" else module_step(model)
    return step, forever(dm.train_dataloader())


def forever(loader):
    while True:
        yield from loader


def steps_per_s(case: str, data_root: str, steps: int, warmup: int) -> dict[str, float]:
    """Steps/s of genlab-train's loop over `case` and, interleaved with it, of plain loops with
    torch's default Adam ("default") and with the Adam genlab chose ("same")."""
    plain = {"default": plain_contender(case, data_root, "single"),
             "same": plain_contender(case, data_root, "auto")}
    with tempfile.TemporaryDirectory() as d:
        cfg = config(case, d, data_root)
        with open_dict(cfg):
            cfg.trainer.max_steps = (1 if case != "dcgan" else 2) * (warmup + steps + 1)
        dm = build_datamodule(cfg.data)
        model = build(cfg.model, image_shape=list(dm.image_shape), _convert_="all")
        model.optim = dict(cfg.optim)
        timer = Interleaved(plain, warmup, steps)
        trainer = build(cfg.trainer, callbacks=[timer, *_build_all(cfg, "callbacks")],
                        logger=_build_all(cfg, "logger"), enable_model_summary=False)
        skip_empty_batch_hooks(trainer.callbacks, model)  # as genlab-train does
        trainer.fit(model, datamodule=dm)
    return {name: steps / t for name, t in timer.times.items()}


def plain_steps(case: str, data_root: str, steps: int, warmup: int, impl: str,
                batches=None) -> float:
    """Steps/s of a plain loop alone, over the module's batches or over `batches` (a loader)."""
    step, own = plain_contender(case, data_root, impl)
    it = own if batches is None else forever(batches)
    for i in range(warmup + steps):
        if i == warmup:
            t0 = clock()
        step(next(it), i)
    return steps / (clock() - t0)


def module_step(model):
    """The module's own training_step (its loss), then a hand-written Adam step."""
    opt = model.configure_optimizers()

    def step(batch, i):
        loss = model.training_step(batch, i)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def gan_step(model):
    """The textbook non-saturating update with the preset's networks: one D step on the real batch
    and the fake batch, then one G step on the same fake batch."""
    g, d = model.generator, model.discriminator
    opt_d, opt_g = model.configure_optimizers()

    def step(batch, i):
        x = batch[0]
        fake = torch.tanh(g(torch.randn(len(x), model.hparams.latent_dim)))  # in [-1, 1], D's scale
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


def run_case(case: str, a) -> dict[str, float]:
    _, batch, steps = CASES[case]
    steps = a.steps or steps
    warmup = max(10, steps // 10)
    loaders = {}
    if case == "conv-b128" and not a.skip_loaders:
        build_datamodule(config(case, ".", a.root).data).setup()  # decompresses into data/
        raw = str(Path(a.root))
        loaders = {w: torchvision_loader(raw, w, batch) for w in (0, 2)}
    ratios: dict[str, list[float]] = {"default": [], "same": [], **{f"tv{w}": [] for w in loaders}}
    for r in range(a.rounds):
        rate = steps_per_s(case, a.root, steps, warmup)
        ours = rate["genlab"]
        ratios["default"].append(ours / rate["default"])
        ratios["same"].append(ours / rate["same"])
        line = (f"{case} round {r}: plain (torch's default Adam) {rate['default']:6.1f} steps/s, "
                f"plain (genlab's Adam) {rate['same']:6.1f}, genlab {ours:6.1f}; ratios "
                f"{ours / rate['default']:.3f} / {ours / rate['same']:.3f}")
        for w, loader in loaders.items():
            tv = plain_steps(case, a.root, steps, warmup, "auto", batches=loader)
            mem = plain_steps(case, a.root, steps, warmup, "auto")
            ratios[f"tv{w}"].append(tv / mem)
            line += f" | torchvision {w} workers {tv:6.1f} steps/s ({tv / mem:.2f}x in-memory)"
        print(line, flush=True)
    return {k: statistics.median(v) for k, v in ratios.items() if v}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", nargs="+", choices=list(CASES), default=DEFAULT_CASES)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=None, help="steps per contender and round")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="cpu: the process's CPU time, for a machine shared with other work "
                        "(with --threads 1, so no thread waits for a descheduled peer)")
    p.add_argument("--root", default="data")
    p.add_argument("--skip-loaders", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    cuda_check_without_nvml()  # as genlab-train does; a plain script never imported Lightning
    global clock
    clock = time.process_time if a.clock == "cpu" else time.perf_counter
    results = {case: run_case(case, a) for case in a.case}
    print(f"\nfloat32 on the CPU, torch threads {torch.get_num_threads()}, {a.clock} clock, "
          f"{a.rounds} rounds; medians of the per-round ratios")
    print("| case | genlab / plain, torch's default Adam | genlab / plain, the same Adam |")
    print("|---|---|---|")
    for case, r in results.items():
        print(f"| {case} | {r['default']:.3f} | {r['same']:.3f} |")
    for case, r in results.items():
        for w in (0, 2):
            if f"tv{w}" in r:
                print(f"{case}: torchvision Dataset+ToTensor+DataLoader ({w} workers) / in-memory "
                      f"batching: {r[f'tv{w}']:.3f}")


if __name__ == "__main__":
    main()
