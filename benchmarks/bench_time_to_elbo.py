"""Time to a test ELBO: genlab's quickstart against pythae 0.1.2 training the same network.

    .venv/bin/python -m pip install --no-deps --target .pythae pythae==0.1.2 imageio
    PYTHONPATH=.pythae .venv/bin/python benchmarks/bench_time_to_elbo.py

pythae is installed into its own folder, outside genlab's dependencies. Both sides train the
quickstart's network (genlab.nets.conv: latent 16, 32 base channels, Bernoulli likelihood) on the
same 55,000 Fashion-MNIST training images at batch 128, each validating on the same 5,000
held-out images every epoch as its trainer does. pythae trains with Adam 1e-3 for `--epochs`;
genlab runs the composed quickstart as `make train` does (`experiment=quickstart`: Adam 3e-3
decayed by 0.8 each epoch, precision auto, i.e. bfloat16 autocast where the CPU has it; its FID comes once, after training)
with any genlab-train overrides given, for `--genlab-epochs`. After every
epoch, with the clock stopped, one function scores both: the single-sample ELBO of all 10,000
test images, its noise from one seeded generator. Printed: each epoch's cumulative training wall
time and test ELBO, and the time each side first reaches `--target` (linearly interpolated
between the epochs around it). The two sides run back to back, pythae first unless
`--genlab-first`.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
import warnings

import pytorch_lightning as pl
import torch
from bench_train import run_config  # this folder is on sys.path when a script here runs
from omegaconf import open_dict
from torch import nn

from genlab.compat import cuda_check_without_nvml, skip_empty_batch_hooks
from genlab.data import build_datamodule
from genlab.models.vae import VAE
from genlab.nets import ConvDecoder, ConvEncoder
from genlab.train import _build_all, build, resolve_precision

warnings.filterwarnings("ignore")
logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
LATENT, BASE = 16, 32


def test_elbo(encoder: nn.Module, decoder: nn.Module, x: torch.Tensor) -> float:
    """The single-sample test ELBO (nats per image) of an encoder/decoder pair, scored as genlab
    scores it, with the same draws for every model."""
    vae = VAE(image_shape=(1, 28, 28), latent_dim=LATENT, net={"name": "conv", "base_channels": BASE},
              loglik_samples=0)
    vae.encoder.load_state_dict(encoder.state_dict())
    vae.decoder.load_state_dict(decoder.state_dict())
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        return sum(float(vae.elbo_terms(b, g)["elbo"].sum()) for b in x.split(1000)) / len(x)


def quickstart(data_root: str, out: str, epochs: int, overrides: list[str]):
    cfg = run_config(out, data_root, ["experiment=quickstart", *overrides])
    with open_dict(cfg):
        cfg.trainer.max_epochs = epochs
    return cfg


class Clock(pl.Callback):
    """Cumulative fit wall time at each epoch's end, less the test-ELBO scoring it runs there."""

    def __init__(self, test_x):
        self.test_x, self.points, self.paused = test_x, [], 0.0

    def on_train_start(self, trainer, pl_module):
        self.t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        now = time.perf_counter()
        elbo = test_elbo(pl_module.encoder, pl_module.decoder, self.test_x)
        self.points.append((now - self.t0 - self.paused, elbo))
        self.paused += time.perf_counter() - now


def run_genlab(data_root: str, epochs: int, overrides: list[str], test_x) -> list:
    with tempfile.TemporaryDirectory() as d:
        cfg = quickstart(data_root, d, epochs, overrides)
        pl.seed_everything(cfg.seed, verbose=False)
        dm = build_datamodule(cfg.data)
        model = build(cfg.model, image_shape=list(dm.image_shape), _convert_="all")
        model.optim = dict(cfg.optim)
        clock = Clock(test_x)
        trainer = build(cfg.trainer, callbacks=[clock, *_build_all(cfg, "callbacks")],
                        logger=_build_all(cfg, "logger"), precision=resolve_precision(cfg.trainer))
        skip_empty_batch_hooks(trainer.callbacks, model)
        trainer.fit(model, datamodule=dm)
    return clock.points


def run_pythae(train_x, val_x, test_x, epochs: int) -> list:
    from pythae.data.preprocessors import DataProcessor
    from pythae.models import VAE as PythaeVAE
    from pythae.models import VAEConfig
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder
    from pythae.trainers import BaseTrainer, BaseTrainerConfig
    from pythae.trainers.training_callbacks import TrainingCallback

    class Encoder(BaseEncoder):
        def __init__(self):
            super().__init__()
            self.net = ConvEncoder((1, 28, 28), 2 * LATENT, BASE)

        def forward(self, x):
            mu, logvar = self.net(x).chunk(2, dim=1)
            return ModelOutput(embedding=mu, log_covariance=logvar)

    class Decoder(BaseDecoder):
        def __init__(self):
            super().__init__()
            self.net = ConvDecoder(LATENT, (1, 28, 28), base_channels=BASE)

        def forward(self, z):
            return ModelOutput(reconstruction=torch.sigmoid(self.net(z)))

    torch.manual_seed(0)
    encoder, decoder = Encoder(), Decoder()
    model = PythaeVAE(VAEConfig(input_dim=(1, 28, 28), latent_dim=LATENT,
                                reconstruction_loss="bce"), encoder=encoder, decoder=decoder)
    points: list = []

    class Clock(TrainingCallback):
        def on_train_begin(self, training_config, **kwargs):
            self.t0, self.paused = time.perf_counter(), 0.0

        def on_epoch_end(self, training_config, **kwargs):
            now = time.perf_counter()
            points.append((now - self.t0 - self.paused, test_elbo(encoder.net, decoder.net, test_x)))
            self.paused += time.perf_counter() - now

    with tempfile.TemporaryDirectory() as d:
        config = BaseTrainerConfig(output_dir=d, per_device_train_batch_size=128,
                                   per_device_eval_batch_size=500, num_epochs=epochs,
                                   learning_rate=1e-3, optimizer_cls="Adam", no_cuda=True)
        data = DataProcessor()  # as pythae's TrainingPipeline wraps tensors
        BaseTrainer(model, train_dataset=data.to_dataset(train_x), eval_dataset=data.to_dataset(val_x),
                    training_config=config, callbacks=[Clock()]).train()
    return points


def time_to(points: list, target: float) -> float | None:
    """Wall time at which the test ELBO first reaches `target`, interpolated between epochs."""
    prev_t, prev_e = 0.0, None
    for t, e in points:
        if e >= target:
            if prev_e is None:
                return t
            return prev_t + (t - prev_t) * (target - prev_e) / (e - prev_e)
        prev_t, prev_e = t, e
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=16, help="pythae's epochs")
    p.add_argument("--genlab-epochs", type=int, default=10)
    p.add_argument("--target", type=float, default=-242.6)
    p.add_argument("--root", default="data")
    p.add_argument("--skip-pythae", action="store_true")
    p.add_argument("--genlab-first", action="store_true", help="run genlab's side first")
    p.add_argument("overrides", nargs="*", help="genlab-train overrides for genlab's side")
    a = p.parse_args()
    cuda_check_without_nvml()
    with tempfile.TemporaryDirectory() as d:
        dm = build_datamodule(quickstart(a.root, d, 1, []).data)
    dm.setup()
    train_x, val_x, test_x = (dm.splits[s][0].float().div(255) for s in ("train", "val", "test"))
    ours = " ".join(["genlab", *a.overrides])
    sides = {"pythae 0.1.2": lambda: run_pythae(train_x, val_x, test_x, a.epochs),
             ours: lambda: run_genlab(a.root, a.genlab_epochs, a.overrides, test_x)}
    order = [ours] if a.skip_pythae else list(sides)[:: -1 if a.genlab_first else 1]
    results = {name: sides[name]() for name in order}
    for name, points in results.items():
        print(f"\n{name}: epoch, cumulative training s, test ELBO")
        for i, (t, e) in enumerate(points, 1):
            print(f"  {i:2d} {t:7.1f} {e:9.2f}")
    times = {name: time_to(points, a.target) for name, points in results.items()}
    print(f"\ntime to test ELBO {a.target}: " + ", ".join(
        f"{name} {'not reached' if t is None else f'{t:.1f} s'}" for name, t in times.items()))
    mine, theirs = times.get(ours), times.get("pythae 0.1.2")
    if mine and theirs:
        print(f"genlab / pythae wall time: {mine / theirs:.2f}")


if __name__ == "__main__":
    main()
