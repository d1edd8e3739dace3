"""genlab's Hydra plugins. Hydra instantiates sweepers and launchers only from classes defined
in the hydra_plugins namespace, so these two live here rather than in genlab.sweep.

- ResumableOptunaSweeper (hydra/sweeper=genlab_optuna): Hydra's Optuna sweeper, taught to continue
  an interrupted search: it counts the trials the study already holds, re-queues the ones an
  interruption left running, runs only the remaining trials and numbers their run folders after
  the existing ones.
- SlurmLauncher (hydra/launcher=slurm): hydra-submitit's SLURM launcher, plus cluster=local.
"""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.utils import instantiate
from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher

log = logging.getLogger("genlab.sweep")


class ResumableOptunaSweeper(OptunaSweeper):
    """Re-running the same command on the same storage (the sqlite file inside the sweep folder,
    reached again with resume=true) continues the search instead of starting it over."""

    def sweep(self, arguments: list[str]) -> None:
        import optuna

        impl = self.sweeper
        study = None
        if impl.storage:
            Path(impl.config.hydra.sweep.dir).mkdir(parents=True, exist_ok=True)  # holds the db
            try:
                study = optuna.load_study(study_name=impl.study_name, storage=impl.storage)
            except KeyError:  # a new study
                study = None
        if study is not None:
            trials = study.get_trials(deepcopy=False)
            done = sum(t.state.is_finished() for t in trials)
            for t in trials:
                if t.state == optuna.trial.TrialState.RUNNING:  # cut off by the interruption
                    study._storage.set_trial_state(t._trial_id, optuna.trial.TrialState.FAIL)
                    study.enqueue_trial(t.params)  # asked again before any new trial
            # a seeded sampler started afresh would propose the first trials again: continue
            # with a seed derived from the configured one and the trials already made
            sampler_cfg = impl.config.hydra.sweeper.get("sampler")
            if sampler_cfg is not None and sampler_cfg.get("seed") is not None:
                impl.sampler = instantiate(sampler_cfg, seed=int(sampler_cfg.seed) + len(trials))
            impl.n_trials = max(0, impl.n_trials - done)
            impl.job_idx = len(trials)  # new run folders are numbered after the old ones
            log.info("resuming study %s: %d trials done, %d to go", impl.study_name, done,
                     impl.n_trials)
            if impl.n_trials == 0:
                log.info("the search is complete; nothing to run")
                return None
        return super().sweep(arguments)


class SlurmLauncher(BaseSubmititLauncher):
    """hydra-submitit's SLURM launcher (one array job per sweep, requeued after preemption or a
    timeout up to max_num_timeout times), plus `cluster=local`, which runs the very same preset
    with submitit's local executor: the SLURM-only settings are then ignored, which is how the
    preset is tested on a machine without SLURM."""

    _EXECUTOR = "slurm"

    def __init__(self, cluster: str = "slurm", **params):
        super().__init__(**params)
        if cluster not in ("slurm", "local"):
            raise ValueError(f"hydra.launcher.cluster={cluster!r} is invalid; allowed: slurm | local")
        self.cluster = cluster

    def launch(self, job_overrides, initial_job_idx):
        import submitit

        if self.cluster == "slurm":
            return super().launch(job_overrides, initial_job_idx)
        auto = submitit.AutoExecutor
        # the parameters stay prefixed for SLURM, so the local executor ignores them
        submitit.AutoExecutor = lambda folder, cluster, **kw: auto(folder, cluster="local", **kw)
        try:
            return super().launch(job_overrides, initial_job_idx)
        finally:
            submitit.AutoExecutor = auto
