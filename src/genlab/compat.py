"""Every use genlab makes of a private API of its libraries, one small function each.

Lightning, Hydra (and its submitit launcher plugin), Optuna and submitit each
lack a public way to do a few things genlab needs. Those uses live here and nowhere else, so an
upgrade breaks this module and its test (tests/test_compat.py), not a training run. Each function
names the private API it uses, why genlab needs it, and the versions it was checked against;
SUPPORTED holds those ranges and `check_versions()` refuses any other installed version in one
line. To support a new version: read the private API in that version's source, run
tests/test_compat.py, and widen the range.

This module is the bottom layer: it imports no genlab module.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import re
import subprocess
import threading
import time
from importlib.metadata import PackageNotFoundError, version
from typing import Any

# distribution name -> (lowest checked version, first version not checked)
SUPPORTED: dict[str, tuple[str, str]] = {
    "pytorch-lightning": ("2.6.0", "2.7"),
    "hydra-core": ("1.3.0", "1.4"),
    "hydra-submitit-launcher": ("1.2.0", "1.3"),
    "optuna": ("5.0.0", "6"),
    "submitit": ("1.5.0", "1.6"),
    # not private, but functions and a registry that the package does not export (metrics/fid.py)
    "torch-fidelity": ("0.4.0", "0.5"),
}

# Private hooks and attributes that genlab's subclasses override or set where the subclass lives
# (it needs genlab code, which this module may not import): "module:Class.name" -> the subclass
# and why. tests/test_compat.py checks that each still exists; the versions are SUPPORTED's.
OVERRIDDEN: dict[str, str] = {
    "pytorch_lightning.loggers.csv_logs:ExperimentWriter._check_log_dir_exists":
        "genlab.loggers._RunWriter: a resumed run keeps the rows of metrics.csv it saved",
    "pytorch_lightning.loggers:CSVLogger._experiment":
        "genlab.loggers.RunCSVLogger: its experiment is a _RunWriter, created on first use",
    "hydra_plugins.hydra_submitit_launcher.submitit_launcher:BaseSubmititLauncher._EXECUTOR":
        "hydra_plugins.genlab_plugins.SlurmLauncher: the executor it asks submitit for (slurm)",
}


class UnsupportedVersionError(RuntimeError):
    """An installed library is outside the range genlab's private-API uses were checked against."""


def installed_version(package: str) -> str | None:
    """The installed version of distribution `package`, None when it is not installed."""
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def check_versions() -> None:
    """Raise UnsupportedVersionError (one line: package, version, supported range) when an
    installed library of SUPPORTED is outside its range. A library that is not installed is not
    checked (the optional plugins)."""
    for package, (low, high) in SUPPORTED.items():
        found = installed_version(package)
        if found is not None and not _release(low) <= _release(found) < _release(high):
            raise UnsupportedVersionError(
                f"{package}=={found} is not supported by genlab.compat; supported: >={low},<{high} "
                f"(genlab uses private APIs of it: check them and widen genlab.compat.SUPPORTED)")


def _release(v: str) -> tuple[int, ...]:
    # the release numbers only: 2.7.0rc1 counts as 2.7.0, so it is outside a range ending at 2.7
    match = re.match(r"\d+(\.\d+)*", v)
    if match is None:
        raise UnsupportedVersionError(f"version {v!r} is not a release number (e.g. 2.6.1)")
    numbers = tuple(int(x) for x in match.group().split("."))
    return numbers + (0,) * (3 - len(numbers))  # 2.7 == 2.7.0


# -- Lightning (pytorch-lightning, which ships lightning_fabric) --------------------------------
def cuda_check_without_nvml() -> None:
    """Let torch.cuda.is_available() answer at once where no NVIDIA driver is installed.

    Importing Lightning sets PYTORCH_NVML_BASED_CUDA_CHECK=1 (lightning_fabric/__init__.py), so
    that asking whether CUDA is there never starts CUDA before a fork. torch then asks NVML on
    every call, caching no answer until CUDA starts; without a driver, loading NVML fails and
    torch falls back to its plain check each time: about 50 us a call, and torch.optim asks once
    per optimizer step (its graph-capture check). With no NVML there is no driver and no CUDA to
    start, so the plain check gives the same answer; where NVML loads, nothing changes.
    Checked against pytorch-lightning 2.6.6 and torch 2.14.1."""
    if os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK") != "1":
        return
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        del os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"]


# the hooks Lightning calls at every training step, and (callbacks only: Lightning reads the
# module's own evaluation hooks' signatures) at every validation and test batch
STEP_HOOKS = ("on_train_batch_start", "on_before_backward", "on_after_backward",
              "on_before_optimizer_step", "on_before_zero_grad", "on_train_batch_end")
BATCH_HOOKS = (*STEP_HOOKS, "on_validation_batch_start", "on_validation_batch_end",
               "on_test_batch_start", "on_test_batch_end")


def skip_empty_batch_hooks(callbacks, module=None) -> None:
    """Spare Lightning its per-batch calls of the hooks that callbacks and the module leave empty.

    Lightning calls six hooks of every callback and of the LightningModule at each training step,
    and for each call formats a profiler label (for ModelCheckpoint a repr of its settings), enters
    a profiler context and sets the module's `_current_fx_name` twice, also for the base classes'
    empty hooks: with genlab's default callbacks, over 50 calls a step, a few per cent of a small network's
    step on a CPU (benchmarks/bench_train.py). Each hook in BATCH_HOOKS that a callback's class
    does not override, and each in STEP_HOOKS that the module's does not, is set to None on the
    instance.

    Private: `pytorch_lightning.trainer.call._call_callback_hooks` and
    `_call_lightning_module_hook` skip a hook attribute that is not callable, and
    `is_overridden` reads None as not overridden. Checked against pytorch-lightning 2.6.6."""
    from pytorch_lightning import Callback, LightningModule

    pairs = [(callback, Callback, BATCH_HOOKS) for callback in callbacks]
    if module is not None:
        pairs.append((module, LightningModule, STEP_HOOKS))
    for obj, base, hooks in pairs:
        for hook in hooks:
            if getattr(type(obj), hook) is getattr(base, hook):
                setattr(obj, hook, None)


def attached_trainer(module) -> Any | None:
    """The Trainer `module` (a LightningModule) is attached to, None outside one.

    Private: `LightningModule._trainer`. The public `module.trainer` raises when no Trainer is
    attached, and genlab's modules also run outside one (scripts, tests). Checked against
    pytorch-lightning 2.6.6."""
    return module._trainer


def should_write_step_logs(trainer) -> bool:
    """Whether Lightning writes the step values logged in this training step (every
    trainer.log_every_n_steps steps); genlab's models skip self.log on the other steps, each call
    costing ~2% of a small model's CPU step.

    Private: `trainer._logger_connector.should_update_logs` (Lightning's own test). Checked
    against pytorch-lightning 2.6.6."""
    return trainer._logger_connector.should_update_logs


def batches_completed_this_epoch(trainer) -> int:
    """The training batches of the current epoch whose step has completed; a resumed run's data
    order goes on from here. Lightning's fetcher reads one batch ahead of the step, so a count of
    batches handed out would be one too many.

    Private: `trainer.fit_loop.epoch_loop.batch_progress` (a _BatchProgress of the
    _TrainingEpochLoop). Checked against pytorch-lightning 2.6.6."""
    return trainer.fit_loop.epoch_loop.batch_progress.current.completed


def val_batches_completed(trainer) -> int:
    """The validation batches completed so far in this training epoch (all its validations
    together; Lightning starts the count again with each epoch), the progress an interrupted
    validation is rewound to.

    Private: `trainer.fit_loop.epoch_loop.val_loop.batch_progress.total`. Checked against
    pytorch-lightning 2.6.6."""
    return trainer.fit_loop.epoch_loop.val_loop.batch_progress.total.completed


def rewind_validation_progress(trainer, completed: int) -> None:
    """Set the fit's validation progress to that of a validation that stopped inside its first
    batch after `completed` batches in all, which a resumed fit runs again from its start (a
    validation cannot go on mid-way: its running means are not saved).

    Private: the counters of `trainer.fit_loop.epoch_loop.val_loop.batch_progress`, set the way
    Lightning leaves them when an exception stops the first batch. Checked against
    pytorch-lightning 2.6.6."""
    progress = trainer.fit_loop.epoch_loop.val_loop.batch_progress
    for counts, before in ((progress.total, completed), (progress.current, 0)):
        counts.ready = counts.started = before + 1
        counts.processed = counts.completed = before
    progress.is_last_batch = False


def request_sigterm_stop(trainer) -> None:
    """Make `trainer` stop at its next check exactly as after a SIGTERM (a SIGTERMException on
    every rank). Only sets a flag, so it is safe inside a signal handler.

    Private: `trainer._signal_connector.received_sigterm`, the flag Lightning's SIGTERM handler
    sets. Checked against pytorch-lightning 2.6.6."""
    trainer._signal_connector.received_sigterm = True


def lightning_run_seed() -> int:
    """The run's seed as `seed_everything` recorded it for the processes it starts (DDP children
    included); 0 outside a seeded run.

    Private: the environment variable PL_GLOBAL_SEED, which seed_everything writes and
    reset_seed read (lightning_fabric.utilities.seed). Checked against pytorch-lightning 2.6.6."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


def use_ddp_child_command(command) -> None:
    """Make Lightning's subprocess launcher start each DDP child with `command(local_rank) ->
    (argv, cwd)` when Hydra is in use. Lightning's own command re-runs the parent's command line
    with Hydra overrides of its own, which under a multirun or genlab's run folders starts the
    child in another folder with other settings.

    Private: `pytorch_lightning.strategies.launchers.subprocess_script._hydra_subprocess_cmd`,
    replaced in the module that calls it. Checked against pytorch-lightning 2.6.6."""
    from pytorch_lightning.strategies.launchers import subprocess_script

    subprocess_script._hydra_subprocess_cmd = command


# -- Hydra -------------------------------------------------------------------------------------
def job_error(job_return) -> Any:
    """What a failed Hydra job raised. The public `JobReturn.return_value` re-raises it (and
    writes to stderr), while genlab's sweep manifest only records it.

    Private: `hydra.core.utils.JobReturn._return_value`. Checked against hydra-core 1.3.8."""
    return job_return._return_value


# -- Optuna ------------------------------------------------------------------------------------
def open_running_trial(study, number: int):
    """(trial, state): trial `number` of `study` as an optuna.trial.Trial whose report() and
    should_prune() go through the study's storage, or None when it is not RUNNING, and its state.
    Optuna has no public way from a trial number to its Trial: a run of a search knows only its
    number (genlab's sweeper hands it over in the environment).

    Private: `Study._storage`, `Study._study_id`, and building optuna.trial.Trial(study, trial_id)
    directly (its documentation advises against it). Checked against optuna 5.1.0."""
    import optuna

    trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
    state = study._storage.get_trial(trial_id).state
    if state != optuna.trial.TrialState.RUNNING:
        return None, state
    return optuna.trial.Trial(study, trial_id), state


# -- submitit and Hydra's submitit launcher plugin ---------------------------------------------
def submitit_requeue_signal() -> int:
    """The signal SLURM sends a submitit job before its time limit (USR2 unless
    SUBMITIT_PREEMPT_SIGNAL says otherwise), on which the job must requeue itself.

    Private: `submitit.JobEnvironment._usr_sig`. Checked against submitit 1.5.4."""
    import submitit

    return submitit.JobEnvironment._usr_sig()


def squeue_fallback_watcher(log: logging.Logger):
    """submitit's poller of SLURM job states, for clusters with or without accounting.

    submitit asks `sacct`. Without accounting every call fails, and submitit prints sacct's error
    and its own warning at every poll, every few seconds for the whole sweep; worse, it then never
    learns that a job ended without writing its result (cancelled, killed, node failure) and waits
    forever. This poller asks `squeue` instead when sacct fails (slurmctld remembers ended jobs
    for MinJobAge, 300 s by default, and it is asked at least every minute), says so once on
    `log`, and keeps sacct's output off the console.

    Private: a subclass of `submitit.slurm.slurm.SlurmInfoWatcher` whose `update` uses its
    `_make_command`, `_num_calls`, `_info_dict`, `_last_status_check`, `_registered` and
    `_finished`. Checked against submitit 1.5.4."""
    from submitit.slurm.slurm import SlurmInfoWatcher

    class Watcher(SlurmInfoWatcher):
        sacct_failed = False

        def update(self) -> None:
            command = self._make_command()
            if command is None:
                return
            self._num_calls += 1
            if not self.sacct_failed:
                proc = subprocess.run(command, capture_output=True, text=True)
                if proc.returncode == 0:
                    self._info_dict.update(self.read_info(proc.stdout))
                else:
                    self.sacct_failed = True
                    log.warning("sacct failed (%s): job states come from squeue, which forgets a "
                                "job MinJobAge after it ends", proc.stderr.strip() or proc.returncode)
            if self.sacct_failed:
                ids = sorted({i for i in command[command.index("-j"):] if i != "-j"})
                proc = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i|%T|%N", "-j",
                                       ",".join(ids)], capture_output=True, text=True)
                if proc.returncode == 0:  # squeue fails once every job is forgotten
                    self._info_dict.update(self.read_info("JobID|State|NodeList\n" + proc.stdout))
            self._last_status_check = time.time()
            for job_id in self._registered - self._finished:
                if self.is_done(job_id, mode="cache"):
                    self._finished.add(job_id)

    Watcher.__qualname__ = "squeue_fallback_watcher.Watcher"
    return Watcher(delay_s=60)


def install_slurm_watcher(log: logging.Logger) -> None:
    """Make every submitit SLURM job of this process poll through `squeue_fallback_watcher`
    (once; a second call keeps the installed one).

    Private: replaces the class attribute `submitit.slurm.slurm.SlurmJob.watcher`, the one poller
    all SLURM jobs share. Checked against submitit 1.5.4."""
    from submitit.slurm.slurm import SlurmJob

    if type(SlurmJob.watcher).__module__ != __name__:
        SlurmJob.watcher = squeue_fallback_watcher(log)


_local_executor = {"users": 0, "auto": None, "lock": threading.Lock()}


@contextlib.contextmanager
def local_submitit_executor():
    """While inside, hydra-submitit's launchers get submitit's local executor whatever cluster
    they ask for, so genlab's SLURM preset runs unchanged on a machine without SLURM (the
    SLURM-prefixed parameters are ignored by the local executor). Threads may be inside together
    (the sweeper's asynchronous workers): the last one out restores submitit.

    Private: replaces `submitit.AutoExecutor`, which the launcher looks up on the submitit module
    at each launch. Checked against submitit 1.5.4 and hydra-submitit-launcher 1.2.0."""
    import submitit

    state = _local_executor
    with state["lock"]:
        if state["users"] == 0:
            auto = state["auto"] = submitit.AutoExecutor
            submitit.AutoExecutor = lambda folder, cluster, **kw: auto(folder, cluster="local", **kw)
        state["users"] += 1
    try:
        yield
    finally:
        with state["lock"]:
            state["users"] -= 1
            if state["users"] == 0:
                submitit.AutoExecutor = state["auto"]
