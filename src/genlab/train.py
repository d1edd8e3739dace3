"""genlab-train: compose a run with Hydra, train it, test it, and write its summary.

    genlab-train                                  # the quickstart VAE on Fashion-MNIST
    genlab-train model.latent_dim=32 seed=1       # any key from conf/ on the command line
    genlab-train debug=smoke                      # a tiny run of any configuration

The path of a run, top to bottom: seed -> datamodule -> model -> loggers, callbacks -> Trainer ->
fit -> validate and test the best checkpoint -> summary.json -> the objective for a sweeper.
"""

from __future__ import annotations

import logging
import math
import traceback
from pathlib import Path

import hydra
import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from genlab.callbacks.guard import DivergedError
from genlab.runs import git_commit, read_checkpoint, write_summary

log = logging.getLogger("genlab")


def _instantiate_all(group: DictConfig | None) -> list:
    """Instantiate every named entry of a callbacks/logger group; null entries are switched off."""
    return [instantiate(c) for c in (group or {}).values() if c is not None]


def train(cfg: DictConfig) -> float | None:
    run_dir = Path(cfg.paths.output_dir)
    pl.seed_everything(cfg.seed, workers=True)

    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model, image_shape=list(datamodule.image_shape), _convert_="all")
    model.data_config = OmegaConf.to_container(cfg.data, resolve=True)
    callbacks = _instantiate_all(cfg.get("callbacks"))
    loggers = _instantiate_all(cfg.get("logger"))
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    if cfg.get("ckpt_path"):
        read_checkpoint(cfg.ckpt_path, key="ckpt_path")  # a clear error now, not mid-way in fit
    summary = {"status": "running", "seed": cfg.seed, "git_commit": git_commit(),
               "objective": cfg.objective.metric}
    if trainer.is_global_zero:
        write_summary(run_dir, summary)
        resolved = OmegaConf.to_container(cfg, resolve=True)
        for lg in loggers:
            lg.log_hyperparams(resolved)
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        ckpt = best or None
        # val/* and test/* in the summary both describe the best checkpoint
        for results in (trainer.validate(model, datamodule=datamodule, ckpt_path=ckpt, verbose=False),
                        trainer.test(model, datamodule=datamodule, ckpt_path=ckpt, verbose=False)):
            summary.update({k: float(v) for k, v in results[0].items()})
        summary.update(status="ok", best_checkpoint=best or None)
    except DivergedError as e:
        summary.update(status="diverged", error=str(e))
        log.error("run diverged: %s", e)
    except BaseException as e:
        summary.update(status="failed", error=f"{type(e).__name__}: {e}",
                       traceback=traceback.format_exc(limit=20))
        raise
    finally:
        summary["epochs"] = trainer.current_epoch
        summary["global_step"] = trainer.global_step
        if trainer.is_global_zero:
            write_summary(run_dir, summary)
            for lg in loggers:
                if hasattr(lg, "experiment") and type(lg).__name__ == "WandbLogger":
                    lg.experiment.summary.update({k: v for k, v in summary.items()
                                                  if k != "traceback"})
        _finish_wandb()

    value = summary.get(cfg.objective.metric)
    if trainer.is_global_zero:
        _report(run_dir, summary)
    return None if value is None or not math.isfinite(value) else float(value)


def _finish_wandb() -> None:
    """Close the W&B run, so a failed or finished run never leaks into the next one of a sweep."""
    try:
        import wandb

        if wandb.run is not None:
            wandb.finish()
    except Exception as e:  # logging must never hide the run's own outcome
        log.warning("closing the W&B run failed: %s", e)


def _report(run_dir: Path, summary: dict) -> None:
    lines = [f"status: {summary['status']}"]
    lines += [f"{k}: {v:.3f}" for k, v in sorted(summary.items())
              if k.startswith("test/") and isinstance(v, float)]
    lines += [f"run directory: {run_dir}",
              f"samples: {run_dir / 'samples'}", f"metrics: {run_dir / 'metrics.csv'}"]
    wandb_runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    if wandb_runs:
        lines.append(f"W&B offline run: {wandb_runs[-1]} (upload: make sync)")
    print("\n".join(lines))


@hydra.main(version_base="1.3", config_path="../../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return train(cfg)


if __name__ == "__main__":
    main()
