"""genlab-train: compose a run with Hydra, train it, test it, and write its summary.

    genlab-train                                  # the quickstart VAE on Fashion-MNIST
    genlab-train model.latent_dim=32 seed=1       # any key from conf/ on the command line
    genlab-train debug=smoke                      # a tiny run of any configuration

The path of a run, top to bottom: seed -> datamodule -> model -> loggers, callbacks -> Trainer ->
fit -> validate and test the best checkpoint -> summary.json -> the objective for a sweeper.
"""

from __future__ import annotations

import importlib.resources
import logging
import math
import os
import signal
import sys
import traceback
import warnings
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, InstantiationException, OverrideParseException
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.exceptions import MisconfigurationException, SIGTERMException

from genlab.callbacks.evaluation import Evaluation
from genlab.callbacks.guard import DivergedError, stop_if_requested
from genlab.callbacks.pruning import RunPruned
from genlab.compat import cuda_check_without_nvml, skip_empty_batch_hooks
from genlab.config import ConfigError, one_line, require
from genlab.data import build_datamodule
from genlab.loggers import RunCSVLogger, RunWandbLogger
from genlab.metrics.extractors import ExtractorUnavailable
from genlab.models import build_model, check_corruption_read, family_of, read_genlab_checkpoint
from genlab.optim import check_settings
from genlab.runs import (
    METRICS_CSV,
    STOPPED,
    DiskFull,
    RunBusy,
    RunReadError,
    disk_full,
    disk_full_message,
    git_commit,
    last_checkpoint,
    read_summary,
    remove_partial_files,
    wandb_offline_runs,
    wandb_run_id,
    write_summary,
)
from genlab.sweep import (
    BUSY_EXIT,
    RunRefused,
    install_ddp_child_command,
    register_resolvers,
    run_lock,
    same_configuration,
)

log = logging.getLogger("genlab")
DDP_ENV = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
LIGHTNING_LOG = "pytorch_lightning.utilities.rank_zero"


class _QuietLightningBanner(logging.Filter):
    """Lightning's start-up lines (accelerators found, advertising tips) say nothing about the run
    and would stand before a user error's one line; everything else it logs passes."""

    BANNER = ("GPU available:", "TPU available:", "HPU available:", "\N{ELECTRIC LIGHT BULB} Tip:")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.BANNER)


def setup() -> None:
    """What genlab-train changes in its process before Hydra composes the config (main() calls
    it; importing this module changes nothing). Idempotent."""
    # the run directory always holds .hydra/ before the CSV logger starts; that is expected
    warnings.filterwarnings("ignore", message="Experiment logs directory .* exists and is not empty")
    # genlab reaches SLURM through its submitit launcher, never through srun around genlab-train
    warnings.filterwarnings("ignore", message="The `srun` command is available on your system")
    banner = logging.getLogger(LIGHTNING_LOG)
    if not any(isinstance(f, _QuietLightningBanner) for f in banner.filters):
        banner.addFilter(_QuietLightningBanner())
    register_resolvers()  # Hydra hands them on to joblib and submitit jobs (Singleton state)
    install_ddp_child_command()


def build(node: DictConfig, **kwargs):
    """hydra's instantiate, with genlab's own ConfigError passed through unwrapped so the user
    reads 'model.objective.beta=-1.0 is invalid; allowed: ...' rather than an instantiation trace."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        if isinstance(e.__cause__, ConfigError):
            raise e.__cause__ from None
        raise


NATIVE_BF16_CPU_FLAGS = {"amx_bf16", "avx512_bf16"}


def cpu_flags() -> set[str]:
    """The CPU's feature flags from Linux's /proc/cpuinfo; empty where it cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return next((set(line.split(":", 1)[1].split()) for line in text.splitlines()
                 if line.startswith("flags")), set())


def resolve_precision(trainer_cfg: DictConfig) -> str | int:
    """trainer.precision=auto: bfloat16 autocast where the hardware computes in bfloat16 (a CUDA
    GPU that supports it, a CPU with AMX or AVX512-BF16), else 32-true. On a CPU without them
    autocast emulates bfloat16 and a VAE training step is several times slower than in float32
    (`benchmarks/bench_train.py --precision bf16-mixed` against its default). Any other value goes
    to Lightning unchanged."""
    precision = trainer_cfg.get("precision", "32-true")
    if precision != "auto":
        return precision
    on_gpu = trainer_cfg.get("accelerator", "auto") in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    if on_gpu:
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "32-true"
    return "bf16-mixed" if NATIVE_BF16_CPU_FLAGS & cpu_flags() else "32-true"


def _build_all(cfg: DictConfig, group: str) -> list:
    """Instantiate every named entry of a callbacks/logger group; null entries are switched off."""
    entries = cfg.get(group) or {}
    for name, c in entries.items():
        if c is not None and "_target_" not in c:
            raise ConfigError(f"{group}.{name} has no _target_ (is {group}={name} selected?); "
                              f"set it to null to switch it off")
    return [build(c) for c in entries.values() if c is not None]


def _in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _sweep_logging(cfg: DictConfig) -> None:
    """Runs of one sweep share a W&B group (task name + sweep folder) and carry their overridden
    keys as tags, so W&B can group and filter them."""
    wandb_cfg = (cfg.get("logger") or {}).get("wandb")
    if wandb_cfg is None or not _in_multirun():
        return
    hc = HydraConfig.get()
    with open_dict(cfg):
        wandb_cfg.group = f"{cfg.task_name}-{Path(hc.sweep.dir).name}"
        swept = [o for o in hc.overrides.task if "=" in o and not o.startswith(("paths.", "hydra"))]
        wandb_cfg.tags = [t[:64] for t in [*cfg.tags, *swept]]  # W&B caps a tag at 64 characters
        wandb_cfg.name = f"{cfg.task_name}-{Path(hc.sweep.dir).name}-{hc.job.num}"


def _wandb_run_id(cfg: DictConfig, run_dir: Path, resuming: bool) -> None:
    """One W&B run per run directory: its id is kept in <run>/wandb/run-id, and an attempt that
    continues from a checkpoint (SIGTERM, SIGKILL, a SLURM requeue) continues that W&B run
    (resume="allow") instead of opening a second one. A run started afresh gets a new id."""
    wandb_cfg = (cfg.get("logger") or {}).get("wandb")
    if wandb_cfg is None or wandb_cfg.get("id"):
        return
    run_id = wandb_run_id(run_dir, resuming, write=rank_zero_only.rank == 0)
    with open_dict(cfg):
        wandb_cfg.id = run_id


def _previous_run(cfg: DictConfig, run_dir: Path) -> tuple[dict | None, str | None]:
    """What an earlier attempt at this run directory left: its summary when it finished ok (and
    resume is on), else the checkpoint to continue from (an interrupted or preempted run)."""
    try:
        old = read_summary(run_dir)
    except RunReadError:
        old = None
    if old and old["status"] == "ok" and cfg.get("resume"):
        return old, None
    last = last_checkpoint(run_dir)
    stopped = old and (old["status"] in STOPPED or old.get("disk_full"))
    if not cfg.get("ckpt_path") and stopped and last.is_file():
        return None, str(last)
    return None, cfg.get("ckpt_path")


def train(cfg: DictConfig) -> float | None:
    """Train the run whose directory is cfg.paths.output_dir, holding the directory's lock
    throughout (genlab.sweep.run_lock): RunBusy, with nothing touched, when another process
    holds it."""
    register_resolvers()  # a config composed in-process (tests, benchmarks) resolves through them
    run_dir = Path(cfg.paths.output_dir)
    with run_lock(run_dir):
        return _train_held(cfg, run_dir)


def _train_held(cfg: DictConfig, run_dir: Path) -> float | None:
    rank_zero = rank_zero_only.rank == 0
    done, ckpt_path = _previous_run(cfg, run_dir)
    if rank_zero:
        continuing = ckpt_path is not None and not cfg.get("ckpt_path")
        same_configuration(run_dir, "skip" if done else "continue" if continuing else "start")
    if done is not None:
        log.info("resume: %s already finished ok; skipping it", run_dir)
        value = done.get(cfg.objective.metric)
        return None if not isinstance(value, float) else value
    launch_env = {k: os.environ.get(k) for k in DDP_ENV}
    summary = {"status": "running", "seed": cfg.seed, "git_commit": git_commit(),
               "objective": cfg.objective.metric}
    if rank_zero:
        remove_partial_files(run_dir)
        write_summary(run_dir, summary)
    trainer = evaluation = None
    try:
        pl.seed_everything(cfg.seed, workers=True, verbose=False)  # the seed is in the summary
        if ckpt_path:
            # a clear error now, not mid-way in fit: the checkpoint's names are checked against
            # genlab's registries and this run's model and data
            resume_step = read_genlab_checkpoint(
                ckpt_path, key="ckpt_path", expect_family=family_of(cfg.model),
                expect_data=cfg.data.name).raw["global_step"]
            summary["resumed_from"] = ckpt_path
        _sweep_logging(cfg)
        _wandb_run_id(cfg, run_dir, resuming=bool(ckpt_path))
        datamodule = build_datamodule(cfg.data)
        model = build_model(cfg.model, datamodule.image_shape)
        model.data_config = OmegaConf.to_container(cfg.data, resolve=True)
        model.optim = check_settings(cfg.optim)
        check_corruption_read(model, cfg)
        callbacks = _build_all(cfg, "callbacks")
        evaluation = next((cb for cb in callbacks if isinstance(cb, Evaluation)), None)
        if evaluation is not None:
            summary["metric_errors"] = evaluation.metric_errors  # filled as evaluations fail
        loggers = _build_all(cfg, "logger")
        summary["precision"] = resolve_precision(cfg.trainer)
        trainer = build(cfg.trainer, callbacks=callbacks, logger=loggers or False,
                        precision=summary["precision"])
        skip_empty_batch_hooks(trainer.callbacks, model)  # Lightning's own callbacks too
        if ckpt_path:
            for lg in loggers:  # metrics.csv and W&B hold each row once across attempts
                if isinstance(lg, RunCSVLogger | RunWandbLogger):
                    lg.resume_at(resume_step)
        resolved = OmegaConf.to_container(cfg, resolve=True)
        for lg in loggers:
            lg.log_hyperparams(resolved)

        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        ckpt = best or None
        # val/* and test/* in the summary both describe the best checkpoint; each starts from
        # the run's seed, so an attempt that resumed (or reran) them draws what one run draws
        for final in (trainer.validate, trainer.test):
            stop_if_requested(trainer)  # a stop after the last check of the fit (or validation)
            pl.seed_everything(cfg.seed, workers=True, verbose=False)
            results = final(model, datamodule=datamodule, ckpt_path=ckpt, verbose=False)
            summary.update({k: float(v) for k, v in results[0].items()})
        summary.update(status="ok", best_checkpoint=best or None)
    except DivergedError as e:
        summary.update(status="diverged", error=str(e))
        log.error("run diverged: %s", e)
    except RunPruned as e:  # an Optuna search's pruner stopped it: a result, not a failure
        summary.update(status="pruned", error=str(e))
        log.info("run %s", e)
    except (SIGTERMException, KeyboardInterrupt) as e:
        summary.update(status="interrupted", error=f"{type(e).__name__}: interrupted; the next "
                       "attempt at this run directory continues from checkpoints/last.ckpt")
        if isinstance(e, SIGTERMException):
            raise SystemExit(128 + signal.SIGTERM) from None  # the shell's code for SIGTERM
        raise
    except BaseException as e:
        full = disk_full(e)
        if full is not None:  # one line, what was kept is whole, and the next attempt continues
            summary.update(status="failed", error=f"{type(full).__name__}: {full}", disk_full=True)
            raise DiskFull(disk_full_message(run_dir, full)) from None
        summary.update(status="failed", error=f"{type(e).__name__}: {e}")
        if not isinstance(e, ConfigError):
            summary["traceback"] = traceback.format_exc(limit=20)
        raise
    finally:
        if trainer is not None:
            summary.update(epochs=trainer.current_epoch, global_step=trainer.global_step)
        if evaluation is not None and evaluation.fid_extractor:
            # FIDs of different feature extractors are on different scales: the summary names it
            summary["fid_extractor"] = evaluation.fid_extractor
        if rank_zero:
            write_summary(run_dir, summary)
        _finish_wandb(summary)
        _leave_ddp(launch_env)

    if rank_zero:
        _report(run_dir, summary)
    value = summary.get(cfg.objective.metric)
    return None if value is None or not math.isfinite(value) else float(value)


def _leave_ddp(launch_env: dict[str, str | None]) -> None:
    """Undo what a DDP run left in this process, so the next run of a sweep starts its own
    children: Lightning's launcher sets LOCAL_RANK & co. in the parent's environment, and a
    parent that still has LOCAL_RANK believes its processes were started externally and waits
    forever for children it never launches."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    for key, value in launch_env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _finish_wandb(summary: dict) -> None:
    """Put the final summary into the W&B run and close it, so a failed or finished run never
    leaks into the next run of a sweep."""
    try:
        import wandb

        if wandb.run is not None:
            wandb.run.summary.update({k: v for k, v in summary.items() if k != "traceback"})
            wandb.finish(exit_code=0 if summary["status"] == "ok" else 1)
    except Exception as e:  # logging must never hide the run's own outcome
        log.warning("closing the W&B run failed: %s", e)


def _report(run_dir: Path, summary: dict) -> None:
    lines = [f"status: {summary['status']}"]
    lines += [f"{k}: {v:.3f}" for k, v in sorted(summary.items())
              if k.startswith("test/") and isinstance(v, float)]
    lines += [f"{k}: {summary[k]:.3f} (feature extractor {summary['fid_extractor']})"
              for k in ("val/fid", "val/fid_expost", "val/fid_recon") if isinstance(summary.get(k), float)]
    lines += [f"run directory: {run_dir}",
              f"samples: {run_dir / 'samples'}", f"metrics: {run_dir / METRICS_CSV}"]
    wandb_runs = wandb_offline_runs(run_dir)
    if wandb_runs:
        lines.append(f"W&B offline run: {wandb_runs[-1]} (upload: make sync)")
    print("\n".join(lines))


# the configs ship inside the package: src/genlab/conf links to the top-level conf/ that users
# edit, and the wheel carries a copy, so genlab-train finds them from a checkout or an install
CONF_DIR = str(importlib.resources.files("genlab") / "conf")
# a bad key, value, file or missing download: one line and exit code 2, never a traceback
USER_ERRORS = (ConfigError, RunReadError, ExtractorUnavailable, HydraException,
               OmegaConfBaseException, MisconfigurationException)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    if _in_multirun():
        # failure isolation: the run's summary (and the sweep manifest) record the error, the
        # sweep goes on, and the sweep's exit code reports the failures at the end
        try:
            return train(cfg)
        except RunRefused as e:  # the sweep manifest records it; the folder keeps its own run
            log.error("run refused: %s", e)
            return e
        except RunBusy as e:  # the run is another process's: the manifest records the skip
            log.warning("run %s is being trained by another process (%s); skipped",
                        HydraConfig.get().job.num, e.holder)
            return e
        except DiskFull as e:
            log.error("run failed: %s", e)
            return None
        except Exception:
            log.exception("run failed; the sweep goes on")
            return None
    try:
        _check_run_keys(cfg)
        return train(cfg)
    except USER_ERRORS as e:  # here, before Hydra adds its "Error executing job" line
        _user_error(e)
    except RunBusy as e:  # one line, a code of its own: nothing is wrong, the run is taken
        _user_error(e, code=BUSY_EXIT)
    except DiskFull as e:  # not the user's mistake (exit code 1), but as plain
        print(f"genlab-train: {e}", file=sys.stderr)
        raise SystemExit(1) from None


def _check_run_keys(cfg: DictConfig) -> None:
    """Top-level keys no module validates; a wrong type would surface deep inside Lightning."""
    require(isinstance(cfg.seed, int) and not isinstance(cfg.seed, bool) and cfg.seed >= 0,
            "seed", "an integer >= 0", cfg.seed)
    epochs = cfg.trainer.get("max_epochs")
    require(epochs is None or (isinstance(epochs, int) and not isinstance(epochs, bool)
                               and (epochs > 0 or epochs == -1)),
            "trainer.max_epochs", "a positive integer, -1 (no limit) or null", epochs)


def _user_error(e: BaseException, code: int = 2) -> None:
    if _FULL_TRACE:
        raise e
    # Hydra's list of config search paths is about Hydra, not about the user's mistake
    text = one_line(Exception(str(e).split("\nConfig search path")[0]))
    if isinstance(e, OverrideParseException):  # its message leaves out the override itself
        text = f"{e.override!r}: {text}"
    print(f"genlab-train: {text}", file=sys.stderr)
    raise SystemExit(code) from None


_FULL_TRACE = os.environ.get("HYDRA_FULL_ERROR") == "1"


def main() -> None:
    """genlab-train's entry. Hydra prints a trimmed traceback for any error, ours included;
    HYDRA_FULL_ERROR makes it raise instead, so a user error is reported here in one line (a
    user who sets HYDRA_FULL_ERROR=1 still gets the full trace)."""
    os.environ["HYDRA_FULL_ERROR"] = "1"
    cuda_check_without_nvml()
    setup()
    try:
        _hydra_main()
    except USER_ERRORS as e:  # composing the config: an unknown group option, key or syntax
        _user_error(e)


if __name__ == "__main__":
    main()
