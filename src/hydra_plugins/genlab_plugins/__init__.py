"""genlab's Hydra plugins. Hydra instantiates sweepers and launchers only from classes defined
in the hydra_plugins namespace, so these two live here rather than in genlab.sweep.

- ResumableOptunaSweeper (hydra/sweeper=genlab_optuna): Hydra's Optuna sweeper, taught to continue
  an interrupted search: it counts the trials the study already holds, re-queues the ones an
  interruption left running, runs only the remaining trials and numbers their run folders after
  the existing ones.
- SlurmLauncher (hydra/launcher=slurm): hydra-submitit's SLURM launcher, plus cluster=local;
  inside each job one handler owns the stop signals (see `StopSignals`).
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import signal
import sys
from pathlib import Path

from hydra.core.utils import JobReturn
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


class _SacctErrorsOnce(logging.Filter):
    """Without SLURM accounting every poll of a job's state fails, and submitit warns each time
    ("Bypassing sacct error ..., status may be inaccurate"), every few seconds for as long as the
    sweep runs. Jobs still end normally: submitit reads each job's result file. Say it once."""

    def __init__(self):
        super().__init__()
        self.seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        if "Bypassing sacct error" not in record.getMessage():
            return True
        if self.seen:
            return False
        self.seen = True
        record.msg = (f"{record.getMessage()} (shown once: without accounting, job states come "
                      "from each job's result file, and a job killed before writing one is "
                      "waited for until the sweep is stopped)")
        record.args = ()
        return True


def _hide_repeated_sacct_errors() -> None:
    submitit_log = logging.getLogger("submitit")
    if not any(isinstance(f, _SacctErrorsOnce) for f in submitit_log.filters):
        submitit_log.addFilter(_SacctErrorsOnce())


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
        import submitit

        self.requeue_signal = submitit.JobEnvironment._usr_sig()
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
        import submitit

        _hide_repeated_sacct_errors()

        if self.cluster == "slurm":
            return super().launch(job_overrides, initial_job_idx)
        auto = submitit.AutoExecutor
        # the parameters stay prefixed for SLURM, so the local executor ignores them
        submitit.AutoExecutor = lambda folder, cluster, **kw: auto(folder, cluster="local", **kw)
        try:
            return super().launch(job_overrides, initial_job_idx)
        finally:
            submitit.AutoExecutor = auto
