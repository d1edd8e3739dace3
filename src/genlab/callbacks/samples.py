"""Sample grids: every N epochs and at the end of training, as PNG files and to every logger."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_only
from torchvision.utils import make_grid, save_image


class SampleGrids(pl.Callback):
    """Calls `pl_module.sample_grids(real)` with a fixed batch of validation images and writes
    each returned image batch to `<run>/samples/<name>_epoch<E>.png` (and `<name>_final.png` at
    the end) and to the loggers that take images (W&B)."""

    def __init__(self, every_n_epochs: int = 1, n: int = 64, out_dir: str | None = None):
        self.every_n_epochs, self.n = every_n_epochs, n
        self.out_dir = out_dir
        self._real: torch.Tensor | None = None

    def _dir(self, trainer: pl.Trainer) -> Path:
        return Path(self.out_dir or Path(trainer.default_root_dir) / "samples")

    def _real_batch(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> torch.Tensor:
        if self._real is None:
            self._real = trainer.datamodule.images("val", self.n)
        return self._real.to(pl_module.device)

    @rank_zero_only
    def write(self, trainer: pl.Trainer, pl_module: pl.LightningModule, tag: str) -> list[Path]:
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            grids = pl_module.sample_grids(self._real_batch(trainer, pl_module))
        pl_module.train(was_training)
        out = self._dir(trainer)
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for name, images in grids.items():
            images = images.detach().float().cpu().clamp(0, 1)
            nrow = max(1, int(len(images) ** 0.5))
            path = out / f"{name}_{tag}.png"
            save_image(images, path, nrow=nrow, padding=2)
            paths.append(path)
            grid = make_grid(images, nrow=nrow, padding=2)
            for logger in trainer.loggers:
                if hasattr(logger, "log_image"):
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
