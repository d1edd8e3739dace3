"""genlab.compat, the one home of genlab's uses of private library APIs: the installed libraries
are the versions they were checked against, each use still works against the real library, and
no other module uses them."""

from __future__ import annotations

import ctypes
import inspect
import os
import re
import signal
import stat
from pathlib import Path

import optuna
import pytest
import pytorch_lightning as pl
import torch
from hydra.core.utils import JobReturn, JobStatus
from pytorch_lightning.utilities.exceptions import SIGTERMException

from genlab import compat
from genlab.data import DigitsDataModule

SRC = Path(__file__).resolve().parents[1] / "src"


# -- versions ----------------------------------------------------------------------------------
@pytest.mark.parametrize("package", sorted(compat.SUPPORTED))
def test_installed_version_is_one_genlab_was_checked_against(package):
    """Fails on an upgrade (or downgrade) of a library whose private API genlab uses: check the
    uses in genlab/compat.py against the new version, then widen SUPPORTED."""
    low, high = compat.SUPPORTED[package]
    found = compat.installed_version(package)
    assert found is not None, f"{package} is not installed"
    assert compat._release(low) <= compat._release(found) < compat._release(high), \
        f"{package}=={found} is outside genlab.compat.SUPPORTED: >={low},<{high}"


def test_check_versions_passes_on_the_installed_libraries():
    compat.check_versions()


@pytest.mark.parametrize("found", ["2.7.0", "2.7.0rc1", "3.0.1", "2.5.9"])
def test_check_versions_refuses_an_unchecked_version_in_one_line(monkeypatch, found):
    real = compat.installed_version
    monkeypatch.setattr(compat, "installed_version",
                        lambda p: found if p == "pytorch-lightning" else real(p))
    with pytest.raises(compat.UnsupportedVersionError) as e:
        compat.check_versions()
    message = str(e.value)
    assert "\n" not in message
    assert f"pytorch-lightning=={found}" in message and ">=2.6.0,<2.7" in message


def test_check_versions_accepts_any_version_inside_the_range(monkeypatch):
    real = compat.installed_version
    monkeypatch.setattr(compat, "installed_version",
                        lambda p: "2.6.99" if p == "pytorch-lightning" else real(p))
    compat.check_versions()
    monkeypatch.setattr(compat, "installed_version",
                        lambda p: None if p == "hydra-submitit-launcher" else real(p))
    compat.check_versions()  # an optional plugin that is not installed is not checked


# -- Lightning ---------------------------------------------------------------------------------
class _Probe(pl.LightningModule):
    """A linear model on digits that records what the compat functions say at each step."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(64, 10)
        self.seen: list[tuple[int, int, int, bool]] = []  # epoch, batch, completed, log?
        self.val_done_at_start: list[int] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        trainer = compat.attached_trainer(self)
        assert trainer is self.trainer
        self.seen.append((self.current_epoch, batch_idx, compat.batches_completed_this_epoch(trainer),
                          compat.should_write_step_logs(trainer)))
        return torch.nn.functional.cross_entropy(self.net(x.flatten(1)), y)

    def validation_step(self, batch, batch_idx):
        x, y, _ = batch  # genlab's evaluation batches: images, labels, indices
        return torch.nn.functional.cross_entropy(self.net(x.flatten(1)), y)

    def on_validation_start(self):
        self.val_done_at_start.append(compat.val_batches_completed(self.trainer))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _trainer(tmp_path, **kw) -> pl.Trainer:
    return pl.Trainer(default_root_dir=tmp_path, accelerator="cpu", devices=1, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, **kw)


def _digits() -> DigitsDataModule:
    return DigitsDataModule(batch_size=100, val_size=300)


def test_lightning_step_counts_and_log_steps_on_a_real_fit(tmp_path):
    model, dm = _Probe(), _digits()
    assert compat.attached_trainer(model) is None  # outside a Trainer, where .trainer raises
    trainer = _trainer(tmp_path, max_epochs=2, log_every_n_steps=3, val_check_interval=3)
    trainer.fit(model, datamodule=dm)
    per_epoch = trainer.num_training_batches
    val_batches = len(dm.val_dataloader())
    assert per_epoch >= 3 and val_batches >= 2
    assert len(model.seen) == 2 * per_epoch
    # inside a step, the batches whose step completed this epoch: the step's own index
    assert all(completed == batch for _, batch, completed, _ in model.seen)
    # step values are written on every third step (Lightning counts steps from 1)
    logged = [i for i, (*_, log) in enumerate(model.seen) if log]
    assert logged == [i for i in range(2 * per_epoch) if (i + 1) % 3 == 0]
    # validation progress accumulates over a training epoch's validations and starts again
    # with each epoch
    per_epoch_validations = per_epoch // 3
    assert per_epoch_validations >= 2
    assert model.val_done_at_start == 2 * [i * val_batches for i in range(per_epoch_validations)]
    assert compat.val_batches_completed(trainer) == per_epoch_validations * val_batches


def test_rewind_validation_progress_marks_a_validation_to_run_again(tmp_path):
    model = _Probe()
    trainer = _trainer(tmp_path, max_epochs=1)
    trainer.fit(model, datamodule=_digits())
    compat.rewind_validation_progress(trainer, 5)
    progress = trainer.fit_loop.epoch_loop.val_loop.batch_progress
    assert compat.val_batches_completed(trainer) == 5
    assert (progress.total.ready, progress.total.started, progress.total.processed) == (6, 6, 5)
    assert (progress.current.ready, progress.current.completed) == (1, 0)
    assert not progress.is_last_batch


def test_request_sigterm_stop_stops_a_fit_like_sigterm(tmp_path):
    class StopAt(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batch_idx == 1:
                compat.request_sigterm_stop(trainer)

    model = _Probe()
    trainer = _trainer(tmp_path, max_epochs=3, callbacks=[StopAt()])
    with pytest.raises(SIGTERMException):
        trainer.fit(model, datamodule=_digits())
    assert trainer.received_sigterm
    assert 2 <= trainer.global_step < trainer.num_training_batches


def test_lightning_run_seed_is_the_seed_everything_set(monkeypatch):
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)  # restored after the test
    assert compat.lightning_run_seed() == 0
    pl.seed_everything(1234, verbose=False)
    assert compat.lightning_run_seed() == 1234


def test_ddp_child_command_replaces_the_one_lightning_calls(monkeypatch):
    from pytorch_lightning.strategies.launchers import subprocess_script

    monkeypatch.setattr(subprocess_script, "_hydra_subprocess_cmd",
                        subprocess_script._hydra_subprocess_cmd)  # restored after the test

    def command(local_rank):
        return ["child", str(local_rank)], "."

    compat.use_ddp_child_command(command)
    assert subprocess_script._hydra_subprocess_cmd is command
    # the launcher looks the name up in that module when it starts the children
    source = inspect.getsource(subprocess_script._SubprocessScriptLauncher._call_children_scripts)
    assert "_hydra_subprocess_cmd(local_rank)" in source


# -- Hydra ---------------------------------------------------------------------------------------
def test_job_error_is_what_a_failed_job_raised():
    ret = JobReturn(overrides=["a=1"])
    ret.status, ret.return_value = JobStatus.FAILED, ValueError("bad lr")
    assert repr(compat.job_error(ret)) == "ValueError('bad lr')"
    with pytest.raises(ValueError):  # the public property re-raises it
        ret.return_value  # noqa: B018


# -- Optuna ------------------------------------------------------------------------------------
def test_open_running_trial_reports_through_the_study(tmp_path):
    from genlab.search import open_storage

    def storage():  # each handle its own, as in the sweeper's and the runs' processes
        return open_storage(tmp_path / "optuna.journal")

    study = optuna.create_study(study_name="s", storage=storage())
    asked = [study.ask() for _ in range(2)]
    again = optuna.load_study(study_name="s", storage=storage())  # what a run of the search opens
    trial, state = compat.open_running_trial(again, 1)
    assert state == optuna.trial.TrialState.RUNNING and trial.number == asked[1].number == 1
    trial.report(0.5, step=3)
    fresh = optuna.load_study(study_name="s", storage=storage())
    assert fresh.trials[1].intermediate_values == {3: 0.5}
    study.tell(0, 1.0)
    trial, state = compat.open_running_trial(again, 0)
    assert trial is None and state == optuna.trial.TrialState.COMPLETE


# -- submitit ----------------------------------------------------------------------------------
def test_submitit_requeue_signal(monkeypatch):
    monkeypatch.delenv("SUBMITIT_PREEMPT_SIGNAL", raising=False)
    assert compat.submitit_requeue_signal() == signal.SIGUSR2


def _fake_tool(folder: Path, name: str, script: str) -> None:
    path = folder / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_slurm_watcher_falls_back_to_squeue(tmp_path, monkeypatch, caplog):
    import logging

    from submitit.slurm.slurm import SlurmInfoWatcher, SlurmJob

    _fake_tool(tmp_path, "sacct", "echo 'accounting storage is disabled' >&2; exit 1\n")
    _fake_tool(tmp_path, "squeue", "echo '77|RUNNING|node1'\necho '78|COMPLETED|node2'\n")
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")  # ours first
    watcher = compat.squeue_fallback_watcher(logging.getLogger("genlab.test"))
    assert isinstance(watcher, SlurmInfoWatcher)
    watcher.register_job("77")
    watcher.register_job("78")
    with caplog.at_level(logging.WARNING, logger="genlab.test"):
        watcher.update()
        watcher.update()
    assert watcher.get_state("77", mode="cache") == "RUNNING"
    assert watcher.get_state("78", mode="cache") == "COMPLETED"
    assert watcher.is_done("78", mode="cache") and not watcher.is_done("77", mode="cache")
    assert [r.message for r in caplog.records].count(
        "sacct failed (accounting storage is disabled): job states come from squeue, which "
        "forgets a job MinJobAge after it ends") == 1

    monkeypatch.setattr(SlurmJob, "watcher", SlurmJob.watcher)  # restored after the test
    compat.install_slurm_watcher(logging.getLogger("genlab.test"))
    installed = SlurmJob.watcher
    assert type(installed).__module__ == "genlab.compat" and installed.sacct_failed is False
    compat.install_slurm_watcher(logging.getLogger("genlab.test"))
    assert SlurmJob.watcher is installed


def test_local_submitit_executor(tmp_path):
    import submitit

    auto = submitit.AutoExecutor
    with compat.local_submitit_executor():
        executor = submitit.AutoExecutor(folder=tmp_path, cluster="slurm")
        assert executor.cluster == "local"
    assert submitit.AutoExecutor is auto
    assert "submitit.AutoExecutor(" in inspect.getsource(
        __import__("hydra_plugins.hydra_submitit_launcher.submitit_launcher",
                   fromlist=["x"]).BaseSubmititLauncher.launch)


@pytest.mark.parametrize("hook", sorted(compat.OVERRIDDEN))
def test_private_hooks_genlab_overrides_still_exist(hook, tmp_path):
    import importlib

    module, qualname = hook.split(":")
    cls_name, name = qualname.split(".")
    cls = getattr(importlib.import_module(module), cls_name)
    if name == "_experiment":  # an instance attribute, set in __init__
        assert cls(tmp_path).__dict__.get(name, "missing") is None
    else:
        assert hasattr(cls, name), f"{hook} is gone: {compat.OVERRIDDEN[hook]}"


def test_torch_fidelity_functions_genlab_uses_exist():
    from torch_fidelity import metric_fid, metric_isc, metric_kid, metric_prc, registry, utils

    for module, name in [(metric_fid, "fid_features_to_statistics"),
                         (metric_fid, "fid_statistics_to_metric"),
                         (metric_isc, "isc_featuresdict_to_metric"),
                         (metric_kid, "kid_features_to_metric"),
                         (metric_prc, "prc_features_to_metric"),
                         (utils, "create_feature_extractor")]:
        assert callable(getattr(module, name, None)), f"torch_fidelity.{module.__name__}.{name}"
    assert "inception-v3-compat" in registry.FEATURE_EXTRACTORS_REGISTRY


# -- nowhere else ------------------------------------------------------------------------------
# the private names genlab.compat wraps; none may appear in another module of genlab
PRIVATE = [r"\._trainer\b", r"_logger_connector", r"batch_progress", r"PL_GLOBAL_SEED",
           r"_signal_connector", r"received_sigterm\s*=", r"_hydra_subprocess_cmd",
           r"\._return_value", r"\._storage\b", r"\._study_id", r"_usr_sig",
           r"SlurmInfoWatcher", r"SlurmJob\.watcher", r"\._info_dict", r"\._make_command",
           r"submitit\.AutoExecutor\s*="]


def test_no_private_api_outside_compat():
    files = [p for p in (*SRC.joinpath("genlab").rglob("*.py"),
                         *SRC.joinpath("hydra_plugins").rglob("*.py"))
             if p != SRC / "genlab" / "compat.py"]
    assert len(files) > 20
    found = [f"{p.relative_to(SRC)}:{n}: {line.strip()}" for p in files
             for n, line in enumerate(p.read_text().splitlines(), 1)
             if any(re.search(name, line) for name in PRIVATE)]
    assert not found, "private library APIs outside genlab/compat.py:\n" + "\n".join(found)
    # and compat.py wraps each of them
    compat_text = (SRC / "genlab" / "compat.py").read_text()
    assert all(re.search(name, compat_text) for name in PRIVATE if "=" not in name)


def test_cuda_check_without_nvml_keeps_torchs_answer(monkeypatch):
    """Where NVML cannot be loaded (no NVIDIA driver), Lightning's NVML-based CUDA check is
    dropped and torch.cuda.is_available() answers as before; where it loads, it stays."""
    monkeypatch.setenv("PYTORCH_NVML_BASED_CUDA_CHECK", "1")  # what importing Lightning sets
    before = torch.cuda.is_available()
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
        nvml = True
    except OSError:
        nvml = False
    compat.cuda_check_without_nvml()
    assert (os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK") == "1") == nvml
    assert torch.cuda.is_available() == before


class _Counting(pl.Callback):
    def __init__(self):
        self.calls = {"on_train_batch_end": 0, "on_validation_batch_end": 0}

    def on_train_batch_end(self, *args):
        self.calls["on_train_batch_end"] += 1

    def on_validation_batch_end(self, *args):
        self.calls["on_validation_batch_end"] += 1


class _ProbeWithHook(_Probe):
    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.batch_ends = getattr(self, "batch_ends", 0) + 1


def test_skipped_empty_hooks_are_never_called_and_the_others_still_are(tmp_path):
    """A fit with the empty batch hooks set aside calls the implemented ones, of the callbacks
    and of the module, as often as a fit without: Lightning passes over a None hook, and the
    other hooks still run."""
    counts = []
    for skip in (False, True):
        kept, empty, model = _Counting(), pl.Callback(), _ProbeWithHook()
        trainer = _trainer(tmp_path, max_epochs=2, callbacks=[kept, empty])
        if skip:
            compat.skip_empty_batch_hooks(trainer.callbacks, model)
            assert kept.on_after_backward is None and empty.on_train_batch_end is None
            assert model.on_before_backward is None
            assert callable(kept.on_train_batch_end) and callable(empty.on_fit_start)
            assert callable(model.on_train_batch_end)
        trainer.fit(model, datamodule=_digits())
        counts.append({**kept.calls, "module": model.batch_ends, "steps": len(model.seen)})
    assert counts[0] == counts[1] and counts[0]["on_train_batch_end"] > 0
    assert counts[0]["on_validation_batch_end"] > 0 and counts[0]["module"] == counts[0]["steps"]
