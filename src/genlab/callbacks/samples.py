"""Sample grids: every N epochs and at the end of training, as PNG files and to every logger."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities import rank_zero_only
from torchvision.utils import make_grid, save_image

from genlab.capabilities import ClassConditional
from genlab.models.conditional import class_grid_labels
from genlab.runs import GENERATED, atomic_path
from genlab.seeding import forked_rng

CLASSES = "classes"  # the class-by-sample grid of a class-conditional model


class SampleGrids(pl.Callback):
    """Writes the family's generated images, `pl_module.generate(n)`, as
    `<run>/samples/generated_epoch<E>.png` (and `generated_final.png` at the end: the one file
    genlab-report shows as a run's samples), then every extra grid that
    `pl_module.sample_grids(real)` returns for a fixed batch of n validation images
    (reconstructions, chains, degraded real images) as `<name>_epoch<E>.png` / `<name>_final.png`,
    and for a class-conditional model (ClassConditional) the class-by-sample grid `classes`: one
    row per class, as many samples as classes in each.
    Every grid also goes to the loggers that take images (W&B) under `samples/<name>`.

    The grids are drawn from a generator seeded with `seed` on a forked random state: the same
    noise at every epoch, so the grids show training progress rather than new draws, and the
    run's own random stream is left as it was, so switching this callback on or off never changes
    a trained number.
    """

    def __init__(self, every_n_epochs: int = 1, n: int = 64, out_dir: str | None = None,
                 seed: int = 0):
        self.every_n_epochs, self.n, self.seed = every_n_epochs, n, seed
        self.out_dir = out_dir
        self._real: torch.Tensor | None = None

    def _dir(self, trainer: pl.Trainer) -> Path:
        return Path(self.out_dir or Path(trainer.default_root_dir) / "samples")

    def _real_batch(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> torch.Tensor:
        if self._real is None:
            self._real = trainer.datamodule.images("val", self.n)
        return self._real.to(pl_module.device)

    def grids(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, torch.Tensor]:
        """{"generated": generate(n), **sample_grids(real)}, drawn under the callback's seed."""
        device = pl_module.device
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad(), forked_rng(device, self.seed):
            grids = {GENERATED: pl_module.generate(self.n)}
            extra = pl_module.sample_grids(self._real_batch(trainer, pl_module))
            if isinstance(pl_module, ClassConditional):
                extra[CLASSES] = pl_module.generate_class(class_grid_labels(pl_module.num_classes,
                                                                            device=device))
        pl_module.train(was_training)
        if GENERATED in extra:
            raise ValueError(f"{type(pl_module).__name__}.sample_grids returned a grid named "
                             f"{GENERATED!r}; that name is the callback's generate(n) grid")
        return grids | extra

    @rank_zero_only
    def write(self, trainer: pl.Trainer, pl_module: pl.LightningModule, tag: str) -> list[Path]:
        out = self._dir(trainer)
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for name, images in self.grids(trainer, pl_module).items():
            images = images.detach().float().cpu().clamp(0, 1)
            nrow = max(1, int(len(images) ** 0.5))
            path = out / f"{name}_{tag}.png"
            with atomic_path(path) as tmp:  # a whole grid or none, also on a full disk
                save_image(images, tmp, format="png", nrow=nrow, padding=2)
            paths.append(path)
            grid = make_grid(images, nrow=nrow, padding=2)
            for logger in trainer.loggers:
                if isinstance(logger, WandbLogger):
                    logger.log_image(key=f"samples/{name}", images=[grid],
                                     caption=[f"{name} {tag}"], step=trainer.global_step)
        return paths

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self.write(trainer, pl_module, f"epoch{trainer.current_epoch:03d}")

    def on_train_end(self, trainer, pl_module):
        self.write(trainer, pl_module, "final")
