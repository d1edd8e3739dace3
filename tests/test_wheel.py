"""genlab works from its wheel (issue 9 item 6): the configs and the extractor weights ship inside
the package, so genlab-train runs from any folder after a non-editable install.

The wheel is built from a copy of the source tree (a build writes build/ next to pyproject.toml)
and installed into a fresh venv that borrows the test venv's dependencies through a .pth file,
so nothing is downloaded.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from conftest import DATA, REPO

# what a build reads (pyproject.toml names README.md); src/genlab/conf links to conf/
BUILD_INPUTS = ("pyproject.toml", "README.md", "src", "conf")
IGNORE = shutil.ignore_patterns("*.egg-info", "__pycache__")


def _run(*cmd, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600, **kw)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


def test_genlab_train_runs_from_the_installed_wheel(tmp_path):
    src = tmp_path / "checkout"
    src.mkdir()
    for name in BUILD_INPUTS:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=IGNORE, symlinks=True)
        else:
            shutil.copy2(REPO / name, src / name)
    dist = tmp_path / "dist"
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", dist, src)
    (wheel,) = dist.glob("genlab-*.whl")

    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {p.relative_to(REPO / "conf").as_posix() for p in (REPO / "conf").rglob("*.yaml")}
    assert {f"genlab/conf/{c}" for c in configs} <= names  # every config, as users edit them
    weights = {p.name for p in (REPO / "src" / "genlab" / "weights").glob("*.pt")}
    assert weights and {f"genlab/weights/{w}" for w in weights} <= names
    assert "hydra_plugins/genlab_plugins/__init__.py" in names  # the sweeper and launcher

    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv)
    py = venv / "bin" / "python"
    site = Path(_run(py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
                .stdout.strip())
    # the test venv's packages (torch, Lightning, Hydra, ...) without genlab's editable path
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run(sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "-q", wheel)

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    run = outside / "run"
    _run(venv / "bin" / "genlab-train", "debug=smoke", "data=digits", "logger=csv",
         f"paths.data_dir={DATA}", f"paths.output_dir={run}", cwd=outside)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "ok"
    # the FID came from the extractor weights inside the installed package
    assert summary["fid_extractor"] == "genlab-digits-cnn" and summary["val/fid"] >= 0
    # the code that ran is the installed copy, not the checkout
    where = _run(py, "-c", "import genlab, hydra_plugins.genlab_plugins as p; "
                 "print(genlab.__file__); print(p.__file__)", cwd=outside).stdout.split()
    assert all(str(venv) in w for w in where), where


def test_what_a_wheel_build_leaves_in_a_checkout_is_ignored_by_git():
    """`pip wheel .` writes build/ and `python -m build` dist/ next to pyproject.toml (issue 25
    item 5): neither may show up as untracked files."""
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    outputs = ["build/lib/genlab/train.py", "dist/genlab-0.1.0-py3-none-any.whl"]
    ignored = subprocess.run(["git", "check-ignore", *outputs], cwd=REPO, capture_output=True,
                             text=True).stdout.split()
    assert ignored == outputs
