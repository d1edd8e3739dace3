"""genlab's Hydra plugins. Hydra instantiates sweepers and launchers only from classes defined
in the hydra_plugins namespace, so these two live here rather than in genlab.sweep.

- ResumableOptunaSweeper (hydra/sweeper=genlab_optuna): Hydra's Optuna sweeper, taught to continue
  an interrupted search (it counts the trials the study already holds, re-queues the ones an
  interruption cut off, runs only the remaining trials and numbers their run folders after the
  existing ones) and to prune: runs report to the study, and a pruned run is a PRUNED trial.
- SlurmLauncher (hydra/launcher=slurm): hydra-submitit's SLURM launcher, plus cluster=local;
  inside each job one handler owns the stop signals (see `StopSignals`).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
import math
import os
import signal
import sys
from pathlib import Path

from hydra.core.utils import JobReturn, JobStatus
from hydra.utils import instantiate
from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher
from omegaconf import OmegaConf

log = logging.getLogger("genlab.sweep")


class ResumableOptunaSweeper(OptunaSweeper):
    """Hydra's Optuna sweeper with genlab's own trial loop, which adds resuming and pruning.

    Resuming: re-running the same command on the same storage (the sqlite file inside the sweep
    folder, reached again with resume=true) continues the search instead of starting it over. A
    trial an interruption left running is settled from its run's manifest entry when the run had
    ended (ok, pruned, failed), and otherwise asked again before any new trial.

    Pruning: each run gets its trial number in the environment (genlab.sweep.TRIAL_ENV, through
    hydra.job.env_set, so it reaches joblib workers and SLURM jobs alike) and reports to the study
    through its storage (genlab.callbacks.pruning); a run its pruner stopped (status pruned in its
    summary) is told to Optuna as PRUNED, a failed or diverged one as FAIL.

    One objective only (genlab optimises objective.metric); GridSampler is refused: a grid is a
    plain multirun (`-m key=a,b,c`)."""

    def sweep(self, arguments: list[str]) -> None:
        import optuna

        from genlab.compat import sweeper_directions, sweeper_search_space, sweeper_trial_overrides
        from genlab.sweep import TRIAL_ENV

        impl = self.sweeper
        if isinstance(impl.sampler, functools.partial):  # how Hydra's plugin passes GridSampler
            raise ValueError("hydra.sweeper.sampler=GridSampler is not supported by genlab_optuna;"
                             " allowed: TPESampler | RandomSampler | CmaEsSampler (for a grid, "
                             "run a plain multirun: -m key=a,b,c)")
        directions = sweeper_directions(impl)
        if len(directions) != 1:
            raise ValueError(f"hydra.sweeper.direction={directions} is invalid; allowed: "
                             "maximize | minimize (one objective: objective.metric)")
        storage = None
        if impl.storage:
            Path(impl.config.hydra.sweep.dir).mkdir(parents=True, exist_ok=True)  # holds the db
            # one connection for the whole search; each handle on it (load_study) reads afresh
            storage = optuna.storages.RDBStorage(impl.storage)
            try:
                old = optuna.load_study(study_name=impl.study_name, storage=storage)
            except KeyError:  # a new study
                old = None
            if old is not None and old.get_trials(deepcopy=False) and not self._resume(old):
                return None
        study = optuna.create_study(study_name=impl.study_name, storage=storage,
                                    sampler=impl.sampler, direction=directions[0],
                                    load_if_exists=True)

        distributions, fixed = sweeper_search_space(impl, arguments)

        to_go = impl.n_trials
        while to_go > 0:
            trials = [study.ask() for _ in range(min(to_go, impl.n_jobs))]
            for i, trial in enumerate(trials):  # the trial's run folder, for a later _resume
                trial.set_user_attr(RUN_ATTR, impl.job_idx + i)
            overrides = [(*o, f"++hydra.job.env_set.{TRIAL_ENV}={t.number}") for t, o in zip(
                trials, sweeper_trial_overrides(impl, trials, distributions, fixed), strict=True)]
            returns = impl.launcher.launch(overrides, initial_job_idx=impl.job_idx)
            impl.job_idx += len(returns)
            if storage is not None:
                # optuna caches the trials a handle asked as it last wrote them; what the runs
                # reported through the storage (the curve a pruned trial ends with, which the
                # sampler reads) only a fresh handle sees
                study = optuna.load_study(study_name=impl.study_name, storage=storage,
                                          sampler=impl.sampler)
            failed = 0
            for trial, ret in zip(trials, returns, strict=True):
                state, value = _outcome(ret)
                study.tell(trial.number, value, state)
                failed += state == optuna.trial.TrialState.FAIL
            if failed > impl.max_failure_rate * len(returns):
                raise RuntimeError(f"{failed} of {len(returns)} trials failed, more than "
                                   f"hydra.sweeper.max_failure_rate={impl.max_failure_rate}")
            to_go -= len(trials)

        if study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            best = study.best_trial
            log.info("best trial %d: %s -> %s", best.number, best.params, best.value)
            OmegaConf.save(OmegaConf.create({"name": "optuna", "best_params": best.params,
                                             "best_value": best.value}),
                           Path(impl.config.hydra.sweep.dir) / "optimization_results.yaml")
        return None

    def _resume(self, study) -> bool:
        """Settle the trials an interruption left running and set the sweeper up for the rest;
        False when the search is already complete."""
        import optuna

        from genlab.sweep import read_manifest

        impl = self.sweeper
        manifest = read_manifest(impl.config.hydra.sweep.dir)
        trials = study.get_trials(deepcopy=False)
        asked_again = 0
        for t in trials:
            if t.state != optuna.trial.TrialState.RUNNING:
                continue
            entry = manifest.get(str(t.user_attrs.get(RUN_ATTR)), {})
            values = list(entry.get("objective", {}).values())
            status = entry.get("status")
            if status == "pruned":
                study.tell(t.number, state=optuna.trial.TrialState.PRUNED)
            elif status == "ok" and values and isinstance(values[0], float) \
                    and math.isfinite(values[0]):
                study.tell(t.number, values[0])
            elif status in ("failed", "diverged"):
                study.tell(t.number, state=optuna.trial.TrialState.FAIL)
            else:  # cut off mid-run: asked again before any new trial
                study.tell(t.number, state=optuna.trial.TrialState.FAIL)
                study.enqueue_trial(t.params)
                asked_again += 1
        done = len(trials) - asked_again
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
        return impl.n_trials > 0


# the user attribute of a trial that names its run folder (the job number) inside the sweep
RUN_ATTR = "genlab_run"


def _outcome(ret: JobReturn):
    """How a finished run is told to Optuna: (state, value)."""
    import optuna

    from genlab.runs import RunReadError, read_summary

    State = optuna.trial.TrialState
    try:
        status = read_summary(ret.hydra_cfg.hydra.runtime.output_dir)["status"]
    except (RunReadError, AttributeError):
        status = None
    if status == "pruned":
        return State.PRUNED, None
    if ret.status == JobStatus.COMPLETED and isinstance(ret.return_value, float | int) \
            and math.isfinite(ret.return_value):
        return State.COMPLETE, float(ret.return_value)
    log.warning("trial failed: run %s ended %s", ret.hydra_cfg.hydra.job.num if ret.hydra_cfg
                else "?", status or ret.status.name)
    return State.FAIL, None


class StopSignals:
    """The one handler of a job's stop signals, installed in the job's process after submitit's.

    SLURM asks a job to stop in two ways. Before the time limit it sends submitit's signal (USR2,
    `signal_delay_s` early): the job must requeue itself, or it is killed for good. On preemption
    or `scontrol requeue` it sends SIGTERM and requeues the job itself. submitit alone requeues on
    USR2 at once, without saving, and ignores SIGTERM; Lightning alone saves on SIGTERM only. So a
    requeue signal becomes a SIGTERM to this process, which Lightning turns into a stop at the next
    step boundary, where genlab's CheckpointOnInterrupt saves checkpoints/last.ckpt; only after
    the run has stopped does `requeue()` hand over to submitit (count the timeout, requeue, exit).
    SIGUSR1 is owned too, so Lightning's own SLURM requeue handler (on USR1) never installs and
    never writes a second, competing checkpoint."""

    def __init__(self):
        from genlab.compat import submitit_requeue_signal

        self.requeue_signal = submitit_requeue_signal()
        self.submitit_handler = signal.getsignal(self.requeue_signal)
        self.received: int | None = None  # the requeue signal, once it came
        self.in_task = False
        for signum in {signal.SIGTERM, signal.SIGUSR1, self.requeue_signal}:
            signal.signal(signum, self)

    def __call__(self, signum, frame) -> None:
        if signum != signal.SIGTERM:
            log.warning("received %s: saving a checkpoint at the next step, then requeueing",
                        signal.Signals(signum).name)
            self.received = signum
            os.kill(os.getpid(), signal.SIGTERM)
            return
        # while a Trainer runs, Lightning has wrapped this handler in its own and stops the loop
        # itself; elsewhere in the run nothing would stop it, so stop it here
        if self.in_task and signal.getsignal(signal.SIGTERM) is self:
            raise _sigterm_exception()

    def around(self, task):
        """The task function, marked as running; a requeue signal that came before it started
        stops it at once (Lightning would forget it when its Trainer starts)."""

        def run(cfg):
            self.in_task = True
            try:
                if self.received is not None:
                    raise _sigterm_exception()
                return task(cfg)
            finally:
                self.in_task = False

        return run

    def requeue(self) -> None:
        """submitit's own requeue: checkpoint the job's arguments, `scontrol requeue`, exit (rank 0;
        other ranks return), or raise UncompletedJobError after max_num_timeout timeouts."""
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the requeue sends one; the run has saved
        if callable(self.submitit_handler):
            self.submitit_handler(self.received, None)


def _sigterm_exception() -> BaseException:
    # genlab.train reads it as an interruption (status interrupted, exit code 143)
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    return SIGTERMException()


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

    def __getstate__(self) -> dict:
        # A job unpickles this launcher before submitit sets up its signal handlers. Unpickling
        # the task function would import genlab.train (torch, Lightning) in that window: seconds,
        # a minute on a busy node, in which the time-limit USR2 kills the job outright, never to
        # be requeued. It travels by name and is imported in __call__, after the handlers.
        state = self.__dict__.copy()
        fn = state.get("task_function")
        module = sys.modules.get(getattr(fn, "__module__", None) or "")
        if fn is not None and module is not None and \
                inspect.unwrap(getattr(module, fn.__qualname__, None)) is fn:
            state["task_function"] = f"{fn.__module__}:{fn.__qualname__}"
        return state

    def __call__(self, *args, **kwargs) -> JobReturn:
        # runs inside the job, after submitit's process_job has set up its own handlers
        stop = StopSignals()
        if isinstance(self.task_function, str):
            module, name = self.task_function.split(":")
            self.task_function = inspect.unwrap(getattr(importlib.import_module(module), name))
        task = self.task_function
        self.task_function = stop.around(task)
        try:
            return super().__call__(*args, **kwargs)
        except SystemExit:  # genlab-train's exit after an interruption (the checkpoint is saved)
            if stop.received is None:
                raise  # a SIGTERM: SLURM requeues (preemption) or ends (scancel) the job itself
        finally:
            self.task_function = task  # submitit pickles this launcher again to requeue it
        stop.requeue()
        raise SystemExit(-1)  # other ranks: rank 0's requeue restarts the whole job

    def launch(self, job_overrides, initial_job_idx):
        from genlab.compat import install_slurm_watcher, local_submitit_executor

        # job states through squeue where sacct fails (a cluster without accounting)
        install_slurm_watcher(log)
        if self.cluster == "slurm":
            return super().launch(job_overrides, initial_job_idx)
        # the parameters stay prefixed for SLURM, so the local executor ignores them
        with local_submitit_executor():
            return super().launch(job_overrides, initial_job_idx)
