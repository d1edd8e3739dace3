"""Pruning of an Optuna search: each run of the search reports its objective to the study after
every validation, and stops early when the study's pruner says the trial is hopeless.

The run and the sweeper share nothing but the study's storage (by default the journal file
optuna.journal in the sweep folder; genlab.search.open_storage), so this works for runs in the sweeper's process, in joblib workers and in SLURM jobs.
genlab's Optuna sweeper (hydra_plugins.genlab_plugins) hands each run its trial number in the
environment (genlab.sweep.TRIAL_ENV); the hparams_search presets wire storage, study and trial
into this callback. A pruned run raises RunPruned: genlab-train writes status `pruned`, and the sweeper
tells the trial to Optuna as PRUNED.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import pytorch_lightning as pl

from genlab.compat import open_running_trial
from genlab.config import ConfigError, require_choice

log = logging.getLogger("genlab")
# name -> optuna pruner class (by name, so the config never names code)
PRUNERS = {
    "none": None,
    "median": "MedianPruner",
    "percentile": "PercentilePruner",
    "successive_halving": "SuccessiveHalvingPruner",
    "hyperband": "HyperbandPruner",
}


class RunPruned(Exception):
    """The study's pruner stopped this run; genlab-train ends it with status `pruned`."""


def make_pruner(name: str, args: dict[str, Any] | None, key: str = "callbacks.pruning"):
    """The optuna pruner `name` (see PRUNERS) built with `args`; None for "none"."""
    import optuna

    require_choice(name, f"{key}.pruner", list(PRUNERS))
    if PRUNERS[name] is None:
        if args:
            raise ConfigError(f"{key}.pruner_args={dict(args)!r} is invalid with pruner=none; "
                              "allowed: {} (or choose a pruner)")
        return None
    try:
        return getattr(optuna.pruners, PRUNERS[name])(**dict(args or {}))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{key}.pruner_args={dict(args or {})!r} is invalid for "
                          f"pruner={name}: {e}") from None


def _open_trial(storage: str, study_name: str, number: int, pruner):
    """The study, and trial `number` of it as an optuna.trial.Trial whose report() and
    should_prune() go through the storage and use `pruner` (None when the trial is not running).
    Optuna has no public way from a trial number to its Trial (genlab.compat.open_running_trial)."""
    import optuna

    from genlab.search import open_storage

    study = optuna.load_study(study_name=study_name, storage=open_storage(storage), pruner=pruner)
    trial, state = open_running_trial(study, number)
    if trial is None:
        log.warning("optuna trial %d is %s, not running: this run reports nothing", number,
                    state.name)
    return study, trial


class OptunaPruning(pl.Callback):
    """Report `monitor` at every validation as the trial's intermediate value (step = epoch) and
    stop the run with RunPruned when the pruner says so. Inert when the run is not a trial of a
    genlab Optuna search (trial is None) or when pruner is "none" (it still reports, so a later
    pruned search can compare against these curves)."""

    def __init__(self, monitor: str, mode: str, storage: str | None = None,
                 study_name: str | None = None, trial: int | str | None = None,
                 pruner: str = "none", pruner_args: dict | None = None):
        self.monitor, self.mode = monitor, mode
        self.storage, self.study_name = storage, study_name
        self.number = None if trial in (None, "") else int(trial)
        self.pruner = make_pruner(pruner, pruner_args)
        self.pruner_name = pruner
        self._trial = None

    def setup(self, trainer, pl_module, stage):
        if stage != "fit" or self.number is None or trainer.global_rank != 0:
            return
        study, trial = _open_trial(self.storage, self.study_name, self.number, self.pruner)
        direction = "maximize" if self.mode == "max" else "minimize"
        if study.direction.name.lower() != direction:
            raise ConfigError(f"objective.mode={self.mode!r} disagrees with the study's direction "
                              f"{study.direction.name.lower()}; allowed: hydra.sweeper.direction="
                              f"{direction}")
        self._trial = trial

    def on_validation_end(self, trainer, pl_module):
        # the final validation of the best checkpoint is not a step of the curve
        if trainer.sanity_checking or self.number is None or trainer.state.fn != "fit":
            return
        prune, value = False, None
        if self._trial is not None:
            value = trainer.callback_metrics.get(self.monitor)
            if value is not None:
                value = float(value)
                self._trial.report(value, step=trainer.current_epoch)
                prune = self.pruner is not None and self._trial.should_prune()
        if trainer.world_size > 1:  # every rank stops together, or the others wait forever
            prune = trainer.strategy.broadcast(prune, src=0)
        if prune:
            shown = f"{value:.4g}" if value is not None and math.isfinite(value) else value
            raise RunPruned(f"pruned by optuna ({self.pruner_name}) after epoch "
                            f"{trainer.current_epoch}: {self.monitor}={shown}")
