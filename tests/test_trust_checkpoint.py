"""A checkpoint can never make genlab run code (issue 8 item 1, the checkpoint half).

Every crafted checkpoint below is valid tensors-and-dicts (torch.load with weights_only=True reads
it), and names a callable that would create a marker file if genlab imported and called it, as
genlab-sample once did with the class and data config a checkpoint named. genlab-sample and
genlab-train's ckpt_path must refuse each one in one line naming the checkpoint and the name,
exit with code 2, and leave the marker absent.
"""

from __future__ import annotations

import pytest
import torch
from conftest import make_cfg, run_cli

from genlab import runs
from genlab.models import FAMILIES, read_genlab_checkpoint
from genlab.sample import main as sample_main
from genlab.train import train


def _cases(marker: str) -> dict[str, tuple[dict, dict, str]]:
    """id -> (the checkpoint's 'genlab' entry, its hyper_parameters, the name the error shows)."""
    touch_sh = {"command": f"touch {marker}"}  # os.system(command=...)
    touch_argv = {"args": ["touch", marker]}  # subprocess.run(args=...)
    return {
        "family os.system": ({"family": "os.system", "data": None}, touch_sh, "'os.system'"),
        "family subprocess.run": ({"family": "subprocess.run", "data": None}, touch_argv,
                                  "'subprocess.run'"),
        # the layout genlab wrote before the registry: an import path and a Hydra data node
        "old model_class": ({"model_class": "os.system",
                             "data": {"_target_": "os.system", **touch_sh}}, touch_sh, "'os.system'"),
        "data _target_": ({"family": "vae", "data": {"_target_": "subprocess.run", **touch_argv}},
                          {"image_shape": [1, 8, 8]}, "'subprocess.run'"),
        "data name is an import path": ({"family": "vae", "data": "os.system",
                                         "data_kwargs": touch_sh}, {"image_shape": [1, 8, 8]},
                                        "'os.system'"),
        "data_kwargs _target_": ({"family": "vae", "data": "digits",
                                  "data_kwargs": {"_target_": "subprocess.run", **touch_argv}},
                                 {"image_shape": [1, 8, 8]}, "'subprocess.run'"),
        "hyper-parameter _target_": ({"family": "vae", "data": "digits", "data_kwargs": {}},
                                     {"_target_": "os.system", **touch_sh}, "'os.system'"),
        # a nested node: the corruption a DAE is built from
        "corruption _target_": ({"family": "dae", "data": "digits", "data_kwargs": {}},
                                {"image_shape": [1, 8, 8],
                                 "corruption": {"_target_": "subprocess.run", **touch_argv}},
                                "'subprocess.run'"),
    }


def _write(path, meta: dict, hparams: dict) -> None:
    torch.save({"state_dict": {}, "hyper_parameters": hparams, "genlab": meta, "epoch": 0,
                "global_step": 0, "pytorch-lightning_version": "2.6.0"}, path)
    torch.load(path, weights_only=True)  # safe to unpickle: the danger is only in the names


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


CASES = list(_cases("MARKER"))


@pytest.mark.parametrize("case", CASES)
def test_genlab_sample_refuses_code_named_by_a_checkpoint(tmp_path, capsys, case):
    marker = tmp_path / "marker"
    meta, hparams, name = _cases(str(marker))[case]
    ckpt = tmp_path / "evil.ckpt"
    _write(ckpt, meta, hparams)
    out = tmp_path / "out.png"
    with pytest.raises(SystemExit) as stop:  # reconstruct: the mode that builds the data source
        sample_main([f"ckpt={ckpt}", "mode=reconstruct", f"out={out}"])
    line = _one_line(capsys.readouterr().err)
    assert stop.value.code == 2
    assert str(ckpt) in line and name in line
    assert not marker.exists() and not out.exists()


@pytest.mark.parametrize("case", ["family os.system", "data _target_", "hyper-parameter _target_"])
def test_genlab_train_ckpt_path_refuses_code_named_by_a_checkpoint(tmp_path, case):
    marker = tmp_path / "marker"
    meta, hparams, name = _cases(str(marker))[case]
    ckpt = tmp_path / "evil.ckpt"
    _write(ckpt, meta, hparams)
    run = tmp_path / "run"
    proc = run_cli("debug=smoke", "data=digits", "logger=csv", f"paths.output_dir={run}",
                   f"ckpt_path={ckpt}", cwd=tmp_path, check=False)
    line = _one_line(proc.stderr)
    assert proc.returncode == 2, proc.stderr
    assert line.startswith("genlab-train: ") and str(ckpt) in line and name in line
    assert not marker.exists()
    assert runs.read_summary(run)["status"] == "failed"
    assert not (run / "checkpoints").exists()


def test_a_real_checkpoint_names_only_registry_entries(smoke, tmp_path):
    """What genlab-train writes: a family name, a dataset name and plain keyword arguments."""
    run = smoke(tmp_path / "run", "data=digits", "callbacks.evaluation=null")
    raw = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    meta = raw["genlab"]
    assert meta["family"] == "vae" and meta["data"] == "digits"
    assert "_target_" not in meta["data_kwargs"] and meta["data_kwargs"]["val_size"] == 150
    assert "model_class" not in meta
    ckpt = read_genlab_checkpoint(run / "checkpoints" / "last.ckpt")
    assert ckpt.family is FAMILIES["vae"] and ckpt.data == "digits"


def test_continuing_a_run_of_another_family_or_dataset_is_refused(smoke, tmp_path):
    run = smoke(tmp_path / "run", "data=digits", "callbacks.evaluation=null")
    last = run / "checkpoints" / "last.ckpt"
    for overrides, words in [
        (["data=digits", "model=dae"], "a 'vae' checkpoint cannot continue a 'dae' model"),
        (["data=dsprites"], "trained on data=digits cannot continue a data=dsprites run"),
    ]:
        cfg = make_cfg(tmp_path / overrides[-1].replace("=", "_"), "debug=smoke", "logger=csv", *overrides,
                       f"ckpt_path={last}")
        with pytest.raises(runs.RunReadError, match=words):
            train(cfg)
