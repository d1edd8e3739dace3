"""Sweeps: a manifest of every run, an exit code that says when runs failed, resumable sweeps and
Optuna searches, and DDP children that belong to their own job.

Hydra runs this module's pieces; genlab's own code reaches them only through conf/:
- `SweepManifest` (a Hydra callback, conf/hydra/default.yaml) keeps `<sweep>/manifest.json`: one
  entry per job with its overrides, directory and status. Jobs of a parallel launcher, and other
  processes on the same sweep, update it under a file lock, so concurrent writers lose nothing.
  At the end of a multirun it raises SystemExit(1) when any run failed or diverged, after every
  run has had its turn (runs an Optuna pruner stopped, status pruned, are not failures, nor is
  a search's trial whose job was lost and whose parameters ran again), SystemExit(TIMEOUT_EXIT)
  when the only runs not done timed out on SLURM for good, and SystemExit(BUSY_EXIT) when the
  only runs not done are another process's.
- `run_lock` (called by train()) and SweepManifest hold a run directory's lock
  (genlab.runs.hold_run) while a job trains it: one process per run folder, so a sweep started
  twice on one folder (resume=true while the first still runs, a requeued SLURM job meeting a
  manual resume) trains each run once; the second skips the runs the first holds.
- `sweep_id` (an OmegaConf resolver): a new sweep gets a timestamp; `resume=true` reuses the
  newest sweep of the same task, `resume=<id>` a named one, so re-running the same multirun
  command with `resume=true` lands every job in its old directory (train() then skips finished
  runs and continues interrupted ones from their last checkpoint).
- The resumable Optuna sweeper and the SLURM launcher live in hydra_plugins.genlab_plugins,
  because Hydra only loads sweepers and launchers from that namespace.
- `same_configuration` (called by train()): a run directory holds one configuration, so
  a resumed sweep whose grid or preset changed since (job N now another setting) cannot mistake a
  finished run for one of the new setting.
- `child_command`: under Hydra, Lightning restarts each DDP child with the original command line,
  which under --multirun re-expands the whole sweep in every child. genlab instead starts each
  child with its own job's overrides and output directory.
"""

from __future__ import annotations

import fcntl
import json
import logging
import shutil
import sys
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from genlab.compat import job_error, use_ddp_child_command
from genlab.config import ConfigError
from genlab.runs import (
    RunBusy,
    RunReadError,
    atomic_write_text,
    flat_config,
    hold_run,
    read_summary,
    release_run,
    run_holder,
    this_process,
)

log = logging.getLogger("genlab.sweep")
MANIFEST = "manifest.json"
# genlab's Optuna sweeper puts each run's trial number here (through hydra.job.env_set); the
# hparams_search presets hand it to genlab.callbacks.pruning.OptunaPruning
TRIAL_ENV = "GENLAB_OPTUNA_TRIAL"
STAMP = "%Y-%m-%d_%H-%M-%S-%f"


# -- sweep ids and resuming --------------------------------------------------------------------
def sweep_id(resume: Any, sweeps_dir: str) -> str:
    """The sweep folder's name: new (a timestamp), or an existing one to resume."""
    if resume in (None, False, "false", "False", ""):
        return datetime.now().strftime(STAMP)
    existing = sorted(p.name for p in Path(sweeps_dir).glob("*") if (p / MANIFEST).is_file())
    if resume in (True, "true", "True"):
        if not existing:
            raise ValueError(f"resume=true: no sweep to resume under {sweeps_dir}")
        return existing[-1]
    if str(resume) not in existing:
        raise ValueError(f"resume={resume!r}: no such sweep under {sweeps_dir}; "
                         f"allowed: true or one of {', '.join(existing[-5:]) or '(none)'}")
    return str(resume)


def num_classes(data_name) -> int | None:
    """The number of classes of a dataset (`model.num_classes` of the conditional models), None
    for one without class labels or a name that is not a dataset (refused where data is built)."""
    from genlab.capabilities import ClassLabels
    from genlab.data import DATASETS

    entry = DATASETS[data_name] if isinstance(data_name, str) and data_name in DATASETS else None
    # classes declare a capability by listing it among their bases
    return entry.num_classes if entry is not None and ClassLabels in entry.__mro__ else None


def trained_bound(objective) -> str:
    """The validation metric of the bound a VAE's objective (`model.objective`, a name or a node)
    trains on: val/iwae for the IWAE, else val/elbo (genlab.models.objectives)."""
    from genlab.models.objectives import VAE_OBJECTIVES
    from genlab.registry import node_name

    return VAE_OBJECTIVES.get(node_name(objective, "model.objective")).bound_metric


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("genlab_sweep_id"):
        # cached: every reference in one process sees the same id
        OmegaConf.register_new_resolver("genlab_sweep_id", sweep_id, use_cache=True)
    if not OmegaConf.has_resolver("genlab_trained_bound"):
        OmegaConf.register_new_resolver("genlab_trained_bound", trained_bound)
    if not OmegaConf.has_resolver("genlab_num_classes"):
        OmegaConf.register_new_resolver("genlab_num_classes", num_classes)


# -- one configuration per run directory -----------------------------------------------------
# the record of the attempt that last started the run: a copy of its .hydra/*.yaml
STARTED_RECORD = "started"
# what a continued run (from checkpoints/last.ckpt) must keep: what it trains, not how
TRAINED = ("seed", "model", "data")


class RunRefused(ConfigError):
    """An attempt at a run directory asked for another configuration than the run it holds."""


def same_configuration(run_dir: Path, attempt: str) -> None:
    """Refuse an attempt at `run_dir` that would mix two configurations in one folder.

    Hydra rewrites <run>/.hydra/ at every attempt before the run starts, and resume=true maps
    job N of a sweep to folder N. If the sweep's grid or preset changed between its parts,
    folder N would claim the new setting while its summary, metrics and checkpoints are the
    old one's. So each attempt that starts a run keeps a copy of .hydra/ in .hydra/started/, and:
    - attempt "skip" (a finished run that resume=true skips) must ask for the same config (the
      seed included; where and how it runs, runs.STARTED, aside);
    - attempt "continue" (from checkpoints/last.ckpt) must train the same thing (TRAINED: seed,
      model, data); how it trains (trainer, callbacks, metrics) may change, and the copy becomes
      this attempt's;
    - attempt "start" (a fresh start) writes the copy.
    A refused attempt puts the copy back over .hydra/ and raises RunRefused before anything else
    in the folder is touched. Folders of runs started before this check have no copy and are
    not checked."""
    hydra_dir = run_dir / ".hydra"
    record = hydra_dir / STARTED_RECORD
    if not (hydra_dir / "config.yaml").is_file():
        return  # not a Hydra run folder (a DDP child writes none)
    if attempt != "start" and record.is_dir():
        old, new = (flat_config(OmegaConf.to_container(OmegaConf.load(d / "config.yaml")))
                    for d in (record, hydra_dir))
        changed = sorted(k for k in old.keys() | new.keys()
                         if (k in old, old.get(k)) != (k in new, new.get(k))
                         and (attempt == "skip" or k.split(".", 1)[0] in TRAINED))
        if changed:
            put_back_started(run_dir)
            shown = ", ".join(f"{k}: {_value(old, k)} -> {_value(new, k)}" for k in changed[:5])
            more = f" and {len(changed) - 5} more" if len(changed) > 5 else ""
            raise RunRefused(
                f"{run_dir} holds a run of another configuration ({shown}{more}); it is left as "
                "it was. A resumed sweep maps job N to folder N, so its grid and preset must be "
                "those it started with; start a new sweep (resume=false) for another grid")
    if attempt != "skip":
        record.mkdir(exist_ok=True)
        for f in hydra_dir.glob("*.yaml"):
            shutil.copy2(f, record / f.name)


def _value(config: dict[str, Any], key: str) -> str:
    return repr(config[key]) if key in config else "(unset)"


def put_back_started(run_dir: Path) -> None:
    """Put the record of the attempt that started the run back over .hydra/, which Hydra rewrote
    for an attempt that is now turned away."""
    hydra_dir = run_dir / ".hydra"
    for f in (hydra_dir / STARTED_RECORD).glob("*.yaml"):
        shutil.copy2(f, hydra_dir / f.name)


# -- one process per run directory ----------------------------------------------------------
# genlab-train's exit code when runs were left alone because another process trains them
BUSY_EXIT = 3
# a sweep's exit code when runs timed out on SLURM more than hydra.launcher.max_num_timeout times
# (and none failed): resume=true with a longer hydra.launcher.timeout_min continues them
TIMEOUT_EXIT = 4


def _trains_the_run() -> bool:
    """Whether this process is the one that writes the run directory: global rank 0. The other
    ranks of a DDP run (Lightning's children, the tasks of a SLURM job) take no lock."""
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    return rank_zero_only.rank == 0


@contextmanager
def run_lock(run_dir: Path):
    """train()'s hold on its run directory (genlab.runs.hold_run) from its first look at the folder
    to its end. Refused (RunBusy), it has touched nothing but what Hydra wrote before any genlab
    code ran: .hydra/, which it puts back, and the job's log, which keeps the refusal's line.
    In a multirun, SweepManifest already holds the lock from on_job_start to on_job_end."""
    if not _trains_the_run():
        yield
        return
    try:
        hold_run(run_dir)
    except RunBusy:
        put_back_started(run_dir)
        raise
    try:
        yield
    finally:
        release_run(run_dir)


# -- the manifest ------------------------------------------------------------------------------
@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read_manifest(sweep_dir: str | Path) -> dict[str, dict]:
    path = Path(sweep_dir) / MANIFEST
    if not path.is_file():
        return {}
    return json.loads(path.read_text())["runs"]


def update_manifest(sweep_dir: str | Path, key: str, entry: dict,
                    if_status: tuple[str | None, ...] | None = None) -> None:
    """Merge one run's entry into the manifest under an exclusive lock (read-modify-write); with
    `if_status`, only if the entry's status is one of those (None: no entry yet)."""
    path = Path(sweep_dir) / MANIFEST
    with _locked(path):
        runs = read_manifest(sweep_dir)
        if if_status is None or runs.get(key, {}).get("status") in if_status:
            runs[key] = {**runs.get(key, {}), **entry}
            atomic_write_text(path, json.dumps({"runs": runs}, indent=2, sort_keys=True) + "\n")


def end_lost_run(sweep_dir: str | Path, key: str, status: str, error: str,
                 hung: bool = False) -> None:
    """Record the end of run `key` whose job ended without on_job_end (killed, cancelled, or timed
    out for good): its manifest entry, unless it already holds an end, and, for `timed_out`, its
    summary, which then says why the run stopped rather than `running` or `interrupted` (the next
    attempt continues from last.ckpt either way). Under the run's lock; skipped while another
    process holds the run, unless that is the lost job itself, still alive but `hung` (its
    heartbeat stopped): then the manifest entry is written and the summary left to it."""
    from genlab.runs import STOPPED, RunBusy, write_summary

    entry = read_manifest(sweep_dir).get(key, {})
    run_dir = Path(sweep_dir) / entry.get("dir", key)
    held = run_dir.is_dir()  # a job lost before its run started has no folder to hold
    if held:
        try:
            hold_run(run_dir)
        except RunBusy:
            if not hung:
                return
            held = False
    try:
        if status == "timed_out" and held:
            try:
                summary = read_summary(run_dir)
            except RunReadError:
                summary = None
            if summary is not None and summary["status"] in STOPPED:
                write_summary(run_dir, {**summary, "status": status, "error": error})
        update_manifest(sweep_dir, key, {"status": status, "error": error[:500],
                                         "ended": datetime.now().isoformat(timespec="seconds")},
                        if_status=(None, "running", "busy", "interrupted", status))
    finally:
        if held:
            release_run(run_dir)


class SweepManifest(Callback):
    """Hydra callback: one manifest entry per job of a multirun, and an exit code that says when
    a run did not end ok. Single runs (and DDP children) are left alone.

    The process that trains a job's run holds the run's lock (genlab.runs.hold_run) from
    on_job_start, before it writes the entry, to on_job_end, after it wrote the outcome, so an
    entry's status is written by the run's holder alone. A job whose run another process holds
    is skipped (train() raises RunBusy); its entry then says `busy`, unless the holder has already
    ended the run, and the holder's outcome replaces it when the holder ends."""

    def __init__(self) -> None:
        self._held: Path | None = None

    def on_job_start(self, config: DictConfig, **kwargs) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        self._release()  # a job that never reached on_job_end
        run_dir = Path(config.hydra.runtime.output_dir)
        if _trains_the_run():
            try:
                hold_run(run_dir)
            except RunBusy:
                return  # train() finds it held too and says so; on_job_end records it
            self._held = run_dir
        update_manifest(config.hydra.sweep.dir, str(config.hydra.job.num), {
            "dir": _subdir(config),
            "overrides": list(config.hydra.overrides.task),
            "status": "running",
            "started": datetime.now().isoformat(timespec="seconds"),
        })

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        try:
            self._record(config, job_return)
        finally:
            self._release()

    def _record(self, config: DictConfig, job_return: JobReturn) -> None:
        key = str(config.hydra.job.num)
        returned = job_return.status == JobStatus.COMPLETED and job_return.return_value
        if isinstance(returned, RunBusy):  # the entry is the holder's, unless nobody ended it
            update_manifest(config.hydra.sweep.dir, key, {
                "dir": _subdir(config), "status": "busy",
                "error": f"{returned}; skipped by {this_process()}",
            }, if_status=(None, "running", "busy"))
            return
        run_dir = Path(config.hydra.runtime.output_dir)
        try:
            summary = read_summary(run_dir)
            entry = {"status": summary["status"], "error": summary.get("error")}
            metric = summary.get("objective")
            if metric in summary:
                entry["objective"] = {metric: summary[metric]}
        except RunReadError as e:
            entry = {"status": "failed", "error": str(e)}
        if job_return.status == JobStatus.FAILED and entry["status"] == "ok":
            entry = {"status": "failed", "error": repr(job_error(job_return))}
        if isinstance(returned, RunRefused):  # the folder keeps its own run and summary
            entry = {"status": "failed", "error": f"RunRefused: {returned}"}
        entry["ended"] = datetime.now().isoformat(timespec="seconds")
        update_manifest(config.hydra.sweep.dir, key, entry)

    def _release(self) -> None:
        if self._held is not None:
            release_run(self._held)
            self._held = None

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep = Path(config.hydra.sweep.dir)
        runs = read_manifest(sweep)
        status = {k: v.get("status") for k, v in runs.items()}
        # runs left to another process: skipped (busy), or running under another's lock
        holder = {k: run_holder(sweep / runs[k].get("dir", k)) for k, s in status.items()
                  if s in ("busy", "running")}
        busy = {k for k, h in holder.items() if h or status[k] == "busy"}
        # an Optuna trial whose job was lost and whose parameters ran again (replaced_by) in a run
        # that ended: its search went on whole, so it is said, not failed
        replaced = {k for k, v in runs.items() if k not in busy and status[k] != "ok"
                    and status.get(str(v.get("replaced_by"))) in ("ok", "pruned")}
        # a pruned run is a search's verdict on its trial, not a failure
        bad = {k for k, s in status.items() if s not in ("ok", "pruned") and k not in busy | replaced}
        timed_out = {k for k in bad if status[k] == "timed_out"}
        n_ok, pruned = (sum(s == x for s in status.values()) for x in ("ok", "pruned"))
        print(f"sweep {sweep}: {n_ok} of {len(runs)} runs ok" + (f", {pruned} pruned" if pruned else "")
              + (f", {len(replaced)} lost and run again" if replaced else "")
              + (f", {len(timed_out)} timed out" if timed_out else "")
              + (f", {len(busy)} left to another process" if busy else "")
              + f" (manifest: {sweep / MANIFEST})")
        for k in sorted(bad | busy | replaced, key=int):
            v = runs[k]
            if k in busy:
                why = (f"being trained by another process ({holder[k]}); once that process has "
                       "ended, the same command with resume=true runs what is left" if holder[k]
                       else "skipped while another process held it, which has stopped since; the "
                       "same command with resume=true continues it")
                v = {**v, "status": "busy", "error": why}
            elif k in replaced:
                v = {**v, "error": f"{v.get('error')}; its parameters ran again as run "
                                   f"{v['replaced_by']}"}
            print(f"  run {k} {v.get('status')}: {' '.join(v.get('overrides', []))}: {v.get('error')}",
                  file=sys.stderr)
        if bad or busy:
            raise SystemExit(1 if bad - timed_out else TIMEOUT_EXIT if timed_out else BUSY_EXIT)


def _subdir(config: DictConfig) -> str:
    return config.hydra.sweep.subdir if config.hydra.sweep.subdir else "."


# -- DDP children ------------------------------------------------------------------------------
def child_command(local_rank: int) -> tuple[list[str], str]:
    """The command Lightning runs for DDP child `local_rank`, and its working directory: this
    job's overrides only, written into this job's output directory, without .hydra/ files."""
    hc = HydraConfig.get()
    command = [sys.executable, "-m", "genlab.train", *hc.overrides.task,
               f"hydra.run.dir={hc.runtime.output_dir}", "hydra.output_subdir=null",
               f"hydra.job.name={hc.job.name}_ddp_rank{local_rank}"]
    return command, hc.runtime.cwd


def install_ddp_child_command() -> None:
    """Make Lightning's subprocess launcher use `child_command` under Hydra."""
    use_ddp_child_command(child_command)
