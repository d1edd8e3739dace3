"""Every user error of genlab's four commands is one line on stderr, exit code 2, no traceback,
and nothing that looks like a finished result (issue 8 item 4b).

The four commands are called in-process through their main() (genlab-train with its command
line in sys.argv), so a case costs no start-up of torch and Lightning; an exception other than
the SystemExit of a user error fails the test as a traceback would. One subprocess per command
also checks the console scripts' exit codes. Every genlab-train case fails before training.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import BIN, DATA
from hydra.core.global_hydra import GlobalHydra

from genlab import probe, report, runs, sample
from genlab import train as train_module
from genlab.models import VAE

# (overrides, a word of the message: the key or the option at fault)
TRAIN = {
    "unknown model group option": (["model=nonexistent"], "model/nonexistent"),
    "unknown data group option": (["data=nonexistent"], "data/nonexistent"),
    "unknown logger group option": (["logger=nope"], "logger/nope"),
    "unknown key": (["model.nope=1"], "model.nope"),
    "override syntax": (["model.latent_dim=["], "model.latent_dim"),
    "seed not an integer": (["seed=abc"], "seed"),
    "max_epochs not an integer": (["trainer.max_epochs=abc"], "trainer.max_epochs"),
    "latent_dim 0": (["model.latent_dim=0"], "model.latent_dim"),
    "negative learning rate": (["model.lr=-1"], "model.lr"),
    "batch size 0": (["data.batch_size=0"], "data.batch_size"),
    "data option the module lacks": (["+data.nope=1"], "data.nope"),
    "negative data limit": (["data.limit=-5"], "data.limit"),
    "validation split too large": (["data.val_size=100000"], "data.val_size"),
    "unknown accelerator": (["trainer.accelerator=nope"], "accelerator"),
    "unknown FID extractor": (["metrics.extractor=nope"], "metrics.extractor"),
    "unknown evaluator": (["+metrics.nope=true"], "metrics.nope"),
    "Inception weights missing offline": (["metrics=inception", "metrics.inception_weights={tmp}/none.pth"],
                                          "metrics.inception_weights"),
    "linear probe on data without class labels": (["data=dsprites", "metrics.linear_probe=true"],
                                                  "metrics.linear_probe"),
    "unknown d_mode": (["model=dcgan", "model.d_mode=nope"], "model.d_mode"),
    "unknown Adam implementation": (["optim.impl=nope"], "optim.impl"),
    "Adam epsilon 0": (["optim.eps=0"], "optim.eps"),
    "negative corruption level": (["model=dae", "corruption=gaussian", "corruption.level=-1"],
                                  "corruption.level"),
    # a setting no part of the run reads is refused, and validated all the same (issue 25 item 2)
    "corruption for a model that reads none": (
        ["corruption=gaussian"], "corruption=gaussian has no effect with model=vae; it is read by model=dae, "
        "model=dcgan model.d_mode=instance_noise|three_class|noise_head, model=restoration_gan"),
    "corruption for the plain discriminator": (["model=dcgan", "corruption=blur"],
                                               "corruption=blur has no effect with model=dcgan model.d_mode=plain;"),
    "corruption kind typo for a model that reads none": (["corruption.kind=gausian"], "corruption.kind='gausian'"),
    "negative corruption level for a model that reads none": (["corruption=gaussian", "corruption.level=-1",
                                                               "allow_unused=[corruption]"], "corruption.level=-1"),
    "allow_unused names no such group": (["allow_unused=[data]"], "allow_unused"),
    "named factor on data without factors": (["model=named_vae"], "model.named_factors"),
    "named factor the data lacks": (["model=named_vae", "data=dsprites", "+model.named_factors.angle=circle"],
                                    "model.named_factors='angle'"),
    "circle on a factor that is no rotation": (["model=named_vae", "data=dsprites",
                                                "+model.named_factors.scale=circle"], "model.named_factors.scale"),
    "labelled fraction 0": (["model=named_vae", "data=dsprites", "model.labelled_fraction=0"],
                            "model.labelled_fraction"),
    "labelled fraction above 1": (["model=named_vae", "data=dsprites", "model.labelled_fraction=2"],
                                  "model.labelled_fraction"),
    "missing ckpt_path": (["ckpt_path={tmp}/missing.ckpt"], "ckpt_path"),
    "corrupt ckpt_path": (["ckpt_path={tmp}/garbage.ckpt"], "ckpt_path"),
    "ckpt_path not written by genlab": (["ckpt_path={tmp}/foreign.ckpt"], "ckpt_path"),
}


def _only_line(err: str, prefix: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got:\n{err}"
    assert lines[0].startswith(prefix), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> Path:
    """Files a user might pass by mistake, and one good checkpoint to pair with bad options."""
    tmp = tmp_path_factory.mktemp("inputs")
    (tmp / "garbage.ckpt").write_bytes(b"not a checkpoint at all")
    (tmp / "empty.ckpt").write_bytes(b"")
    (tmp / "notes.txt").write_text("a text file\n" * 20)
    (tmp / "a_folder").mkdir()
    torch.save(torch.zeros(3), tmp / "tensor.pt")
    torch.save({"state_dict": {}}, tmp / "foreign.ckpt")  # a Lightning-like file, not genlab's
    model = VAE(image_shape=(1, 8, 8), latent_dim=2, net={"name": "conv", "base_channels": 4})
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                "genlab": {"family": "vae", "data": "digits", "data_kwargs": {"val_size": 150}}},
               tmp / "vae.ckpt")
    named = VAE(image_shape=(1, 64, 64), latent_dim=4, net={"name": "conv", "base_channels": 4},
                named_factors={"orientation": "circle"}, objective="named_elbo")
    torch.save({"state_dict": named.state_dict(), "hyper_parameters": dict(named.hparams),
                "genlab": {"family": "vae", "data": "dsprites", "data_kwargs": {}}},
               tmp / "named.ckpt")
    return tmp


@pytest.mark.parametrize("case", list(TRAIN))
def test_genlab_train_user_error(bad_files, tmp_path, monkeypatch, capfd, case):
    overrides, word = TRAIN[case]
    run_dir = tmp_path / "run"
    monkeypatch.chdir(tmp_path)  # Hydra's own folder (outputs/) goes here
    monkeypatch.setattr(sys, "argv", [
        "genlab-train", "debug=smoke", "data=digits", "logger=csv", f"paths.data_dir={DATA}",
        f"paths.output_dir={run_dir}", *(o.format(tmp=bad_files) for o in overrides)])
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")  # main() sets it; restored after the test
    GlobalHydra.instance().clear()  # an earlier case may have left Hydra initialised
    with pytest.raises(SystemExit) as stop:
        train_module.main()
    captured = capfd.readouterr()  # file descriptors: Lightning's handlers hold the real stderr
    assert stop.value.code == 2, captured.err[-3000:]
    assert "Traceback" not in captured.out + captured.err
    assert word in _only_line(captured.err, "genlab-train: ")
    summary = run_dir / runs.SUMMARY
    assert not summary.exists() or json.loads(summary.read_text())["status"] != "ok"
    assert not (run_dir / "checkpoints").exists()


SAMPLE = {  # arguments, a word of the message
    "no arguments": ([], "ckpt"),
    "not key=value": (["{tmp}/vae.ckpt"], "key=value"),
    "unknown key": (["ckpt={tmp}/vae.ckpt", "bar=1"], "'bar=1'"),
    "n=0": (["ckpt={tmp}/vae.ckpt", "n=0"], "n="),
    "n not a number": (["ckpt={tmp}/vae.ckpt", "n=abc"], "n="),
    "steps=0": (["ckpt={tmp}/vae.ckpt", "steps=0"], "steps="),
    "negative seed": (["ckpt={tmp}/vae.ckpt", "seed=-1"], "seed="),
    "unknown device": (["ckpt={tmp}/vae.ckpt", "device=nope"], "device="),
    "out not an image": (["ckpt={tmp}/vae.ckpt", "out={tmp}/grid.txt"], "out="),
    "mode of another family": (["ckpt={tmp}/vae.ckpt", "mode=chain"], "mode="),
    "traversal without a unit": (["ckpt={tmp}/vae.ckpt", "mode=traversal"], "unit="),
    "traversal of a latent index too large": (["ckpt={tmp}/vae.ckpt", "mode=traversal", "unit=2"], "unit="),
    "traversal of a factor the model does not name": (["ckpt={tmp}/named.ckpt", "mode=traversal",
                                                       "unit=scale"], "unit='scale'"),
    "missing checkpoint": (["ckpt={tmp}/missing.ckpt"], "ckpt="),
    "garbage checkpoint": (["ckpt={tmp}/garbage.ckpt"], "ckpt="),
    "empty checkpoint": (["ckpt={tmp}/empty.ckpt"], "ckpt="),
    "text file": (["ckpt={tmp}/notes.txt"], "ckpt="),
    "a folder": (["ckpt={tmp}/a_folder"], "ckpt="),
    "a bare tensor": (["ckpt={tmp}/tensor.pt"], "ckpt="),
    "not written by genlab": (["ckpt={tmp}/foreign.ckpt"], "ckpt="),
}


@pytest.mark.parametrize("case", list(SAMPLE))
def test_genlab_sample_user_error(bad_files, capsys, case):
    args, word = SAMPLE[case]
    out = bad_files / (re.sub(r"\W+", "_", case) + ".png")
    args = [a.format(tmp=bad_files) for a in args]
    if not any(a.startswith("out=") for a in args):
        args.append(f"out={out}")
    with pytest.raises(SystemExit) as stop:
        sample.main(args)
    assert stop.value.code == 2
    captured = capsys.readouterr()
    assert word in _only_line(captured.err, "genlab-sample: ")
    assert not captured.out and not out.exists() and not (bad_files / "grid.txt").exists()


def _write_run(path: Path, status: str = "ok") -> Path:
    """A run directory as genlab-train leaves it, with one metric and its curve."""
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "config.yaml").write_text("seed: 0\nmodel:\n  objective: {name: elbo, beta: 1.0}\n")
    runs.write_summary(path, {"status": status, "seed": 0, "val/elbo": -100.0})
    (path / "metrics.csv").write_text("epoch,step,val/elbo\n0,10,-120.0\n1,20,-100.0\n")
    return path


REPORT = {  # arguments, a word of the message
    "no arguments": ([], "--out"),
    "no --out": (["{runs}"], "--out"),
    "unknown option": (["{runs}", "--out", "{out}", "--bogus"], "--bogus"),
    "missing folder": (["{tmp}/nowhere", "--out", "{out}"], "nowhere"),
    "folder without runs": (["{tmp}/a_folder", "--out", "{out}"], "a_folder"),
    "corrupt summary": (["{broken}", "--out", "{out}"], "summary.json"),
    "--out is a file": (["{runs}", "--out", "{tmp}/notes.txt"], "--out"),
    "--metrics typo": (["{runs}", "--out", "{out}", "--metrics", "val/elbow"], "--metrics"),
    "--x typo": (["{runs}", "--out", "{out}", "--x", "model.betta"], "--x"),
    "--step-metric typo": (["{runs}", "--out", "{out}", "--step-metric", "val/elbow"],
                           "--step-metric"),
    "--baseline key typo": (["{runs}", "--out", "{out}", "--baseline", "model.betta=1"],
                            "--baseline"),
    "--baseline without =": (["{runs}", "--out", "{out}", "--baseline", "plain"], "KEY=VALUE"),
}


@pytest.mark.parametrize("case", list(REPORT))
def test_genlab_report_user_error(bad_files, tmp_path, capsys, case):
    args, word = REPORT[case]
    runs_dir = tmp_path / "runs"
    _write_run(runs_dir / "0")
    broken = _write_run(tmp_path / "broken" / "0").parent
    (broken / "0" / runs.SUMMARY).write_text("{not json")
    out = tmp_path / "report"
    args = [a.format(tmp=bad_files, runs=runs_dir, out=out, broken=broken) for a in args]
    try:
        code = report.main(args)
    except SystemExit as stop:  # argparse's own errors
        code = stop.code
    assert code == 2
    captured = capsys.readouterr()
    assert word in _only_line(captured.err, "genlab-report: ")
    assert not captured.out and not (out / "summary.md").exists()


def test_genlab_report_control_case_writes_a_report(tmp_path):
    """The run directory the error cases start from is a good one."""
    _write_run(tmp_path / "runs" / "0")
    assert report.main([str(tmp_path / "runs"), "--out", str(tmp_path / "report"),
                        "--metrics", "val/elbo", "--x", "model.objective.beta"]) == 0
    assert (tmp_path / "report" / "summary.md").is_file()


PROBE = {  # arguments, a word of the message
    "unknown dataset": (["--data", "nope"], "--data"),
    "n not a number": (["--data", "digits", "--n", "abc"], "--n"),
    "n too small": (["--data", "digits", "--n", "3"], "--n"),
    "level without a corruption": (["--data", "digits", "--level", "0.5"], "--level"),
    "unknown corruption": (["--data", "digits", "--corruption", "nope"], "--corruption"),
    "negative level": (["--data", "digits", "--corruption", "blur", "--level", "-1"], "--level"),
    "angle out of range": (["--data", "digits", "--corruption", "rotate_crop", "--level", "400"],
                           "--level"),
    "negative seed": (["--data", "digits", "--seed", "-1"], "--seed"),
}


@pytest.mark.parametrize("case", list(PROBE))
def test_genlab_probe_user_error(capsys, case):
    args, word = PROBE[case]
    with pytest.raises(SystemExit) as stop:
        probe.main(args)
    assert stop.value.code == 2
    captured = capsys.readouterr()
    assert word in _only_line(captured.err, "genlab-probe: ")
    assert "accuracy=" not in captured.out


@pytest.mark.parametrize("exe, args, word", [
    ("genlab-train", ["model=nonexistent"], "model/nonexistent"),
    ("genlab-sample", ["ckpt={tmp}/garbage.ckpt", "out={tmp}/x.png"], "ckpt="),
    ("genlab-report", ["{tmp}/nowhere", "--out", "{tmp}/report"], "nowhere"),
    ("genlab-probe", ["--data", "digits", "--n", "3"], "--n"),
])
def test_console_scripts_exit_2_in_one_line(bad_files, exe, args, word):
    proc = subprocess.run([str(BIN / exe), *(a.format(tmp=bad_files) for a in args)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stdout + proc.stderr
    assert word in _only_line(proc.stderr, f"{exe}: ")
