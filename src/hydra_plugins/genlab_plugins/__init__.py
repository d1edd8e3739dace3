"""genlab's Hydra plugins. Hydra instantiates sweepers and launchers only from classes defined
in the hydra_plugins namespace, so these two live here rather than in genlab.sweep.

- ResumableOptunaSweeper (hydra/sweeper=genlab_optuna): genlab's Optuna sweeper (ask-and-tell),
  in batches or with asynchronous workers; it continues an interrupted search (it counts the
  trials the study already holds, re-queues the ones an interruption cut off, runs only the
  remaining trials and numbers their run folders after the existing ones) and prunes: runs report
  to the study, and a pruned run is a PRUNED trial.
- SlurmLauncher (hydra/launcher=slurm): hydra-submitit's SLURM launcher, plus cluster=local;
  inside each job one handler owns the stop signals (see `StopSignals`).
"""

from __future__ import annotations

import importlib
import inspect
import logging
import math
import os
import signal
import sys
import time
from pathlib import Path

from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher
from omegaconf import OmegaConf

log = logging.getLogger("genlab.sweep")


class ResumableOptunaSweeper(Sweeper):
    """genlab's Optuna sweeper, on Optuna's public ask-and-tell interface.

    The search space is Hydra's sweep syntax in `params` and on the command line
    (genlab.search.search_space); the sampler is chosen by name (genlab.search.SAMPLERS) and
    seeded; the direction is the objective's (objective.mode). Trials run either in batches of
    `n_jobs` through the launcher (the next batch is asked once the whole batch has ended), or,
    with `workers=N`, asynchronously: N runs are in flight at any time, and whenever one ends its
    result is told and the next trial asked at once (each run a job of the SLURM launcher, on the
    cluster or, with hydra.launcher.cluster=local, as a process on this machine). A job that dies
    without a result (killed, cancelled, its node lost) is told FAIL and its parameters are asked
    again once.

    Resuming: re-running the same command on the same storage (the journal file inside the sweep
    folder, reached again with resume=true) continues the search instead of starting it over. A
    trial an interruption left running is settled from its run's manifest entry when the run had
    ended (ok, pruned, failed), and otherwise asked again before any new trial.

    Pruning: each run gets its trial number in the environment (genlab.sweep.TRIAL_ENV, through
    hydra.job.env_set, so it reaches joblib workers and SLURM jobs alike) and reports to the study
    through its storage (genlab.callbacks.pruning); a run its pruner stopped (status pruned in its
    summary) is told to Optuna as PRUNED, a failed or diverged one as FAIL."""

    def __init__(self, sampler=None, direction: str | None = None, storage: str | None = None,
                 study_name: str = "genlab", n_trials: int = 20, n_jobs: int = 1,
                 workers: int | None = None, max_failure_rate: float = 1.0,
                 heartbeat_interval: int | None = 10, grace_period: int | None = None,
                 params: dict | None = None):
        self.sampler_cfg = OmegaConf.to_container(sampler) if OmegaConf.is_config(sampler) \
            else sampler
        self.direction, self.storage, self.study_name = direction, storage, study_name
        self.n_trials, self.n_jobs, self.workers = int(n_trials), int(n_jobs), workers
        self.max_failure_rate = max_failure_rate
        self.heartbeat_interval = None if heartbeat_interval is None else int(heartbeat_interval)
        self.grace_period = None if self.heartbeat_interval is None else \
            int(grace_period or 3 * self.heartbeat_interval)
        self.params = OmegaConf.to_container(params) if OmegaConf.is_config(params) else params
        self.config = self.launcher = self.hydra_context = None
        self.job_idx = 0

    def setup(self, *, hydra_context, task_function, config) -> None:
        from hydra.core.plugins import Plugins

        from genlab.sweep import register_resolvers

        register_resolvers()  # the jobs' configs name them; importing genlab registers nothing
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        import optuna

        from genlab.config import ConfigError, require_choice
        from genlab.search import (
            grid_size,
            make_sampler,
            open_storage,
            sampler_config,
            search_space,
        )

        direction = DIRECTIONS.get(self.direction, self.direction)
        require_choice(direction, "hydra.sweeper.direction", ["maximize", "minimize"])
        mode = OmegaConf.select(self.config, "objective.mode")
        if mode is not None and DIRECTIONS.get(mode) != direction:
            raise ConfigError(f"hydra.sweeper.direction={self.direction!r} disagrees with "
                              f"objective.mode={mode!r}; allowed: {DIRECTIONS.get(mode)}")
        if self.workers is not None:
            if int(self.workers) < 1 or self.n_jobs != 1:
                raise ConfigError(f"hydra.sweeper.workers={self.workers!r} is invalid with "
                                  f"n_jobs={self.n_jobs}; allowed: workers >= 1 with n_jobs=1 "
                                  "(workers run asynchronously, n_jobs in batches)")
            if not isinstance(self.launcher, SlurmLauncher):
                raise ConfigError("hydra.sweeper.workers needs hydra/launcher=slurm (with "
                                  "hydra.launcher.cluster=slurm or local), whose jobs run in "
                                  "their own processes; allowed: that, or hydra.sweeper.n_jobs")
        if self.heartbeat_interval is not None and (
                self.heartbeat_interval < 1 or self.grace_period <= self.heartbeat_interval):
            raise ConfigError(f"hydra.sweeper.heartbeat_interval={self.heartbeat_interval} with "
                              f"grace_period={self.grace_period} is invalid; allowed: an interval "
                              ">= 1 s and a longer grace period (null: 3 intervals), or null")
        if isinstance(self.launcher, SlurmLauncher):  # its jobs beat (Heartbeat)
            self.launcher.heartbeat_interval = self.heartbeat_interval
        sampler_name, _ = sampler_config(self.sampler_cfg)  # a bad name stops it before any run
        distributions, fixed = search_space(self.params, arguments)
        if not distributions:
            raise ConfigError("hydra.sweeper.params has no sweep (choice, range, interval); "
                              "allowed: at least one, e.g. model.lr: interval(1e-4, 1e-2)")
        if sampler_name == "grid" and self.n_trials > grid_size(distributions):
            log.info("the grid has %d points: n_trials %d -> %d", grid_size(distributions),
                     self.n_trials, grid_size(distributions))
            self.n_trials = grid_size(distributions)

        Path(self.config.hydra.sweep.dir).mkdir(parents=True, exist_ok=True)  # holds the storage
        storage = open_storage(self.storage)
        done = 0
        if storage is not None and self.study_name in {
                s.study_name for s in optuna.get_all_study_summaries(storage)}:
            study = optuna.load_study(study_name=self.study_name, storage=storage)
            done = self._resume(study)
            if done >= self.n_trials:
                log.info("the search is complete; nothing to run")
                return None
        sampler = make_sampler(self.sampler_cfg, distributions, seed_offset=self.job_idx)
        study = optuna.create_study(study_name=self.study_name, storage=storage, sampler=sampler,
                                    direction=direction, load_if_exists=True)
        if self.workers is None:
            self._batches(study, distributions, fixed, self.n_trials - done)
        else:
            self._asynchronous(study, distributions, fixed, self.n_trials - done)

        if study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            best = study.best_trial
            log.info("best trial %d: %s -> %s", best.number, best.params, best.value)
            OmegaConf.save(OmegaConf.create({"name": "optuna", "best_params": best.params,
                                             "best_value": best.value}),
                           Path(self.config.hydra.sweep.dir) / "optimization_results.yaml")
        return None

    def _ask(self, study, distributions: dict, fixed: dict) -> tuple[object, list[str]]:
        """A new trial (an enqueued one first) and its run's overrides; the run's folder is the
        next job number."""
        from genlab.search import trial_overrides
        from genlab.sweep import TRIAL_ENV, update_manifest

        trial = study.ask(fixed_distributions=distributions)
        trial.set_user_attr(RUN_ATTR, self.job_idx)  # the trial's run folder, for a later _resume
        if RETRY_ATTR in trial.user_attrs:  # the lost trial's run names the run that replaces it
            lost = study.get_trials(deepcopy=False)[trial.user_attrs[RETRY_ATTR]]
            if RUN_ATTR in lost.user_attrs:  # else the sweep stopped before it had a run
                update_manifest(self.config.hydra.sweep.dir, str(lost.user_attrs[RUN_ATTR]),
                                {"replaced_by": self.job_idx})
        self.job_idx += 1
        return trial, [*trial_overrides(trial.params, fixed),
                       f"++hydra.job.env_set.{TRIAL_ENV}={trial.number}"]

    def _batches(self, study, distributions: dict, fixed: dict, to_go: int) -> None:
        import optuna

        from genlab.search import tell

        while to_go > 0:
            first = self.job_idx
            asked = [self._ask(study, distributions, fixed) for _ in range(min(to_go, self.n_jobs))]
            returns = self.launcher.launch([o for _, o in asked], initial_job_idx=first)
            failed = 0
            for (trial, _), ret in zip(asked, returns, strict=True):
                state, value = _outcome(ret)
                tell(study, trial.number, value, state)
                failed += state == optuna.trial.TrialState.FAIL
            self._check_failures(failed, len(returns))
            to_go -= len(asked)

    def _asynchronous(self, study, distributions: dict, fixed: dict, to_go: int) -> None:
        """Keep `workers` runs in flight until `to_go` trials are told; no batch waits for its
        slowest run. Each run is one launch, waited on by a thread of its own (a daemon: Ctrl-C
        or a crash of the sweeper does not wait for the jobs); only this thread asks and tells,
        so no two runs get the same trial. A run is lost when its job ends without a result
        (killed, cancelled: the launcher says so) or when its heartbeat file is older than
        grace_period (a hung job, a lost node, which SLURM may report much later or never): its
        trial is told FAIL at once and its parameters asked again, once; a lost job that still
        runs finds its heartbeat withdrawn and stops itself. A run that timed out on SLURM for
        good is told FAIL and not asked again (it would time out again)."""
        import queue
        import threading

        import optuna

        from genlab.search import tell
        from genlab.sweep import end_lost_run

        ended: queue.Queue = queue.Queue()
        sweep_dir = str(self.config.hydra.sweep.dir)

        def launch(trial, overrides: list[str], idx: int) -> None:
            try:
                (ret,) = self.launcher.launch([overrides], initial_job_idx=idx)
            except Exception as e:  # not even submitted (sbatch refused it, ...)
                ret = JobReturn()
                ret.status, ret.return_value = JobStatus.COMPLETED, JobLost("failed", f"{e}"[:500])
                end_lost_run(sweep_dir, str(idx), "failed", f"job lost: {e}"[:500])
            ended.put((trial, ret))

        in_flight: dict[int, object] = {}  # run (job number) -> its trial
        counts = {"told": 0, "failed": 0}

        def settle(trial, ret, lost) -> None:
            if lost is not None:
                log.warning("trial %d (run %d): %s", trial.number, trial.user_attrs[RUN_ATTR],
                            lost.error)
                tell(study, trial.number, None, optuna.trial.TrialState.FAIL)
                if lost.status != "timed_out" and RETRY_ATTR not in trial.user_attrs:
                    study.enqueue_trial(trial.params, user_attrs={RETRY_ATTR: trial.number})
                    return  # asked again, once: its replacement stands for it
                state = optuna.trial.TrialState.FAIL
            else:
                state, value = _outcome(ret)
                tell(study, trial.number, value, state)
            counts["told"] += 1
            counts["failed"] += state == optuna.trial.TrialState.FAIL
            self._check_failures(counts["failed"], counts["told"])

        while counts["told"] < to_go:
            while len(in_flight) < int(self.workers) and counts["told"] + len(in_flight) < to_go:
                trial, overrides = self._ask(study, distributions, fixed)
                in_flight[self.job_idx - 1] = trial
                threading.Thread(target=launch, args=(trial, overrides, self.job_idx - 1),
                                 daemon=True).start()
            try:
                trial, ret = ended.get(timeout=self.heartbeat_interval)
                # a run whose heartbeat stopped was settled then; what its job returns is moot
                if in_flight.pop(trial.user_attrs[RUN_ATTR], None) is not None:
                    settle(trial, ret, ret.return_value if isinstance(ret.return_value, JobLost)
                           else None)
            except queue.Empty:
                pass
            for run in stale_heartbeats(sweep_dir, in_flight, self.grace_period):
                lost = JobLost("failed", f"job lost: no heartbeat for {self.grace_period} s")
                withdraw_heartbeat(sweep_dir, run)  # the job, should it still run, stops itself
                end_lost_run(sweep_dir, str(run), lost.status, lost.error, hung=True)
                settle(in_flight.pop(run), None, lost)

    def _check_failures(self, failed: int, told: int) -> None:
        if failed > self.max_failure_rate * told:
            raise RuntimeError(f"{failed} of {told} trials failed, more than "
                               f"hydra.sweeper.max_failure_rate={self.max_failure_rate}")

    def _ended_entry(self, manifest: dict, run: str) -> dict:
        """The run's manifest entry; where it says the run had not ended (its job was killed
        between the run's end and the entry's), the run's summary, written into the entry."""
        from genlab.runs import RunReadError, read_summary
        from genlab.sweep import update_manifest

        entry = manifest.get(run, {})
        if entry.get("status") in ENDED or "dir" not in entry:
            return entry
        try:
            summary = read_summary(Path(self.config.hydra.sweep.dir) / entry["dir"])
        except RunReadError:
            return entry
        if summary["status"] not in ENDED:
            return entry
        metric = summary.get("objective")
        ended = {"status": summary["status"], "error": summary.get("error"),
                 **({"objective": {metric: summary[metric]}} if metric in summary else {})}
        update_manifest(self.config.hydra.sweep.dir, run, ended)
        return {**entry, **ended}

    def _resume(self, study) -> int:
        """Settle the trials an interruption left running, number new run folders after the old
        ones, and return how many trials are done."""
        import optuna

        from genlab.sweep import end_lost_run, read_manifest

        manifest = read_manifest(self.config.hydra.sweep.dir)
        for t in study.get_trials(deepcopy=False):
            if t.state != optuna.trial.TrialState.RUNNING:  # WAITING: enqueued, asked next
                continue
            entry = self._ended_entry(manifest, str(t.user_attrs.get(RUN_ATTR)))
            values = list(entry.get("objective", {}).values())
            status = entry.get("status")
            if status == "pruned":
                study.tell(t.number, state=optuna.trial.TrialState.PRUNED)
            elif status == "ok" and values and isinstance(values[0], float) \
                    and math.isfinite(values[0]):
                study.tell(t.number, values[0])
            elif status in ("failed", "diverged", "timed_out"):
                study.tell(t.number, state=optuna.trial.TrialState.FAIL)
            else:  # cut off mid-run (or before it had a run): asked again before any new trial
                if RUN_ATTR in t.user_attrs:
                    end_lost_run(self.config.hydra.sweep.dir, str(t.user_attrs[RUN_ATTR]),
                                 "interrupted", "cut off when its sweep stopped")
                study.tell(t.number, state=optuna.trial.TrialState.FAIL)
                study.enqueue_trial(t.params, user_attrs={RETRY_ATTR: t.number})
        # a trial whose job was lost is not done: its replacement (retry_of) stands for it
        trials = study.get_trials(deepcopy=False)
        replaced = {t.user_attrs[RETRY_ATTR] for t in trials if RETRY_ATTR in t.user_attrs}
        done = sum(t.state.is_finished() and t.number not in replaced for t in trials)
        # new run folders are numbered after the old ones; a seeded sampler started afresh would
        # propose the first trials again: its seed moves on by the trials already made
        self.job_idx = max([-1, *(int(t.user_attrs.get(RUN_ATTR, -1)) for t in trials)]) + 1
        log.info("resuming study %s: %d trials done, %d to go", self.study_name, done,
                 max(0, self.n_trials - done))
        return done


# objective.mode (or the direction itself) -> Optuna's direction
DIRECTIONS = {"max": "maximize", "min": "minimize"}


# the statuses of a run that has ended (genlab.runs.STATUSES less running and interrupted)
ENDED = ("ok", "pruned", "failed", "diverged", "timed_out")
# the user attribute of a trial that names its run folder (the job number) inside the sweep
RUN_ATTR = "genlab_run"
# the user attribute of a trial asked again after its job died: the number of the lost trial
RETRY_ATTR = "retry_of"


class JobLost:
    """What the SLURM launcher returns for a job that ended without a result of its run: killed,
    cancelled, its node lost (status failed), or timed out more than max_num_timeout times
    (status timed_out). The run's manifest entry says the same (genlab.sweep.end_lost_run)."""

    def __init__(self, status: str, error: str):
        self.status, self.error = status, error

    def __repr__(self) -> str:
        return f"JobLost({self.status}: {self.error})"


# -- heartbeats ----------------------------------------------------------------------------------
# Optuna's own heartbeats (RDBStorage(heartbeat_interval=...), fail_stale_trials) are RDB-only in
# Optuna 5 (JournalStorage has none) and assume one process runs a trial from start to end: a
# SLURM job requeued after a timeout or preemption, waiting in the queue, would be failed as
# stale. genlab's heartbeat is a file per running job beside the study, <sweep>/.heartbeats/<run>,
# whose mtime the job's process renews every heartbeat_interval s; a requeue and a normal end
# remove it (no file: not running, nothing to judge), so only a job that died or hangs leaves an
# old one. It works with every storage and on a shared filesystem (mtime only).
HEARTBEATS = ".heartbeats"


def _heartbeat_path(sweep_dir: str | Path, run: int | str) -> Path:
    return Path(sweep_dir) / HEARTBEATS / str(run)


def stale_heartbeats(sweep_dir: str | Path, runs, grace_period: int | None) -> list:
    """The runs (of `runs`) whose heartbeat file is older than grace_period seconds."""
    if grace_period is None:
        return []
    now, stale = time.time(), []
    for run in list(runs):
        try:
            if now - _heartbeat_path(sweep_dir, run).stat().st_mtime > grace_period:
                stale.append(run)
        except FileNotFoundError:  # not started yet, requeued, or ended
            continue
    return stale


def withdraw_heartbeat(sweep_dir: str | Path, run: int | str) -> None:
    """Mark run's heartbeat stale (`<run>.stale`): a job that still runs it stops itself."""
    path = _heartbeat_path(sweep_dir, run)
    try:
        os.replace(path, path.with_name(f"{run}.stale"))
    except FileNotFoundError:
        pass


class Heartbeat:
    """A job's heartbeat (see HEARTBEATS): a daemon thread renews the file every `interval` s
    until stop(), which removes it. If the sweeper has withdrawn it (the job was taken for lost),
    the job sends itself SIGTERM: the run stops at the next step and the trial, told FAIL and
    asked again elsewhere, is never run by two jobs at once."""

    def __init__(self, sweep_dir: str | Path, run: int | str, interval: int):
        import threading

        self.path = _heartbeat_path(sweep_dir, run)
        self.withdrawn = self.path.with_name(f"{run}.stale")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.withdrawn.unlink(missing_ok=True)  # a requeued job is this run's job again
        self.path.touch()
        self.interval, self.done = interval, threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True, name="genlab-heartbeat")
        self.thread.start()

    def _beat(self) -> None:
        while not self.done.wait(self.interval):
            if self.withdrawn.exists():
                log.warning("the sweeper took this job for lost (%s): stopping", self.withdrawn)
                os.kill(os.getpid(), signal.SIGTERM)
                return
            self.path.touch()

    def stop(self) -> None:
        self.done.set()
        self.thread.join()
        self.path.unlink(missing_ok=True)


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
        self.sweep_dir: str | None = None  # set at launch; the jobs read it
        self.heartbeat_interval: int | None = None  # genlab's Optuna sweeper sets it (Heartbeat)

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

    def __call__(self, sweep_overrides, job_dir_key, job_num, job_id, singleton_state) -> JobReturn:
        # runs inside the job, after submitit's process_job has set up its own handlers
        from submitit.core.utils import UncompletedJobError

        from genlab.sweep import end_lost_run

        stop = StopSignals()
        beat = None
        if self.heartbeat_interval and self.sweep_dir and int(os.environ.get("SLURM_PROCID", 0)) == 0:
            beat = Heartbeat(self.sweep_dir, job_num, self.heartbeat_interval)
        if isinstance(self.task_function, str):
            module, name = self.task_function.split(":")
            self.task_function = inspect.unwrap(getattr(importlib.import_module(module), name))
        task = self.task_function
        self.task_function = stop.around(task)
        try:
            return super().__call__(sweep_overrides, job_dir_key, job_num, job_id, singleton_state)
        except SystemExit:  # genlab-train's exit after an interruption (the checkpoint is saved)
            if stop.received is None:
                raise  # a SIGTERM: SLURM requeues (preemption) or ends (scancel) the job itself
        finally:
            self.task_function = task  # submitit pickles this launcher again to requeue it
            if beat is not None:  # a requeued job waits in the queue without one
                beat.stop()
        try:
            stop.requeue()
        except UncompletedJobError:  # timed out more than max_num_timeout times: the run ends
            if self.sweep_dir:
                end_lost_run(self.sweep_dir, str(job_num), "timed_out", self._timed_out())
            raise
        raise SystemExit(-1)  # other ranks: rank 0's requeue restarts the whole job

    def _timed_out(self) -> str:
        p = self.params
        return (f"timed out on SLURM more than hydra.launcher.max_num_timeout="
                f"{p.get('max_num_timeout')} times (timeout_min={p.get('timeout_min')}); "
                "resume=true with a longer hydra.launcher.timeout_min continues it from "
                "checkpoints/last.ckpt")

    def launch(self, job_overrides, initial_job_idx):
        from genlab.compat import install_slurm_watcher, local_submitit_executor

        # job states through squeue where sacct fails (a cluster without accounting)
        install_slurm_watcher(log)
        self.sweep_dir = str(self.config.hydra.sweep.dir)  # before the jobs pickle this launcher
        if self.cluster == "slurm":
            return self._launch(job_overrides, initial_job_idx)
        # the parameters stay prefixed for SLURM, so the local executor ignores them
        with local_submitit_executor():
            return self._launch(job_overrides, initial_job_idx)

    def _launch(self, job_overrides, initial_job_idx) -> list[JobReturn]:
        """hydra-submitit's launch (checked against hydra-submitit-launcher 1.2.0), except that
        the jobs' results are collected one by one: a job that ended without a result (killed,
        cancelled, timed out for good) is a JobLost, and its manifest entry says so, instead of
        an exception that ends the whole sweep before the rest of the array is collected."""
        import submitit
        from hydra.core.singleton import Singleton
        from hydra.core.utils import filter_overrides
        from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

        params = dict(self.params)
        init = {"folder": params.pop("submitit_folder")}
        if "max_num_timeout" in params:
            init[f"{self._EXECUTOR}_max_num_timeout"] = params.pop("max_num_timeout")
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **init)
        queue_keys = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in queue_keys else f"{self._EXECUTOR}_{k}": v
                                      for k, v in params.items()})
        sweep_dir = Path(self.sweep_dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        log.info(f"Submitit '{self._EXECUTOR}' sweep output dir : {sweep_dir}")
        job_params = []
        for idx, overrides in enumerate(job_overrides, initial_job_idx):
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            job_params.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}",
                               Singleton.get_state()))
        jobs = executor.map_array(self, *zip(*job_params, strict=True))
        return [self._result(job, initial_job_idx + i) for i, job in enumerate(jobs)]

    def _result(self, job, idx: int) -> JobReturn:
        from genlab.sweep import end_lost_run, read_manifest

        try:
            return job.results()[0]
        except Exception as e:
            text = str(e)
            status = "timed_out" if "timed-out too many times" in text \
                or "(state: TIMEOUT" in text else "failed"
            error = self._timed_out() if status == "timed_out" else f"job lost: {text}"[:500]
            end_lost_run(self.sweep_dir, str(idx), status, error)
            entry = read_manifest(self.sweep_dir).get(str(idx), {})  # the job's own word first
            lost = JobLost(entry.get("status", status), entry.get("error") or error)
            log.warning("run %d: %s", idx, lost.error)
            ret = JobReturn()
            ret.status, ret.return_value = JobStatus.COMPLETED, lost
            return ret
