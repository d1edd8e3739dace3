"""`make study NAME=<preset> SMOKE=1`: a study's sweep, then its HTML report, into a scratch folder."""

from __future__ import annotations

import csv
import json
import subprocess

import pytest
from conftest import REPO

# The studies whose smoke pipeline the suite runs, each with the genlab-train arguments that narrow
# its grid to what fits about a minute of CI (two runs here: the pipeline, not the science).
SMOKE_STUDIES = {
    "ablation_blur_d": "seed=0 arm=plain,noise_head-blur",
}


def make_study(*args: str, dry_run: bool = False) -> subprocess.CompletedProcess:
    cmd = ["make", "--no-print-directory", *(["-n"] if dry_run else []), "study", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)


@pytest.mark.parametrize("name", sorted(SMOKE_STUDIES))
def test_study_smoke_pipeline(name, tmp_path):
    logs, results = tmp_path / "logs", tmp_path / "results"
    proc = make_study(f"NAME={name}", "SMOKE=1", f"STUDY_LOGS={logs}", f"STUDY_OUT={results}",
                      f"ARGS={SMOKE_STUDIES[name]}")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]

    (sweep,) = logs.glob("*/multiruns/*")
    entries = json.loads((sweep / "manifest.json").read_text())["runs"].values()
    assert [e["status"] for e in entries] == ["ok", "ok"]
    with open(results / "summary.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 2 and sum(int(row["n_ok"]) for row in table) == 2
    page = (results / "report.html").read_text()
    assert page.count('<section class="configuration"') == 2
    assert f"experiment={name}" in page and "debug=smoke" in page  # each run's command
    for name_ in ("summary.md", "samples.png"):
        assert (results / name_).stat().st_size > 0


def test_study_smoke_writes_to_a_scratch_folder_and_full_runs_to_experiments():
    smoke = make_study("NAME=ablation_blur_d", "SMOKE=1", dry_run=True).stdout
    assert "--out outputs/studies-smoke/ablation_blur_d/results --html" in smoke
    assert "debug=smoke" in smoke and "experiments/" not in smoke
    full = make_study("NAME=ablation_blur_d", dry_run=True).stdout
    assert "--out experiments/ablation_blur_d/results --html" in full and "debug=smoke" not in full


@pytest.mark.parametrize("name", ["", "no_such_study"])
def test_study_needs_a_preset(name):
    proc = make_study(f"NAME={name}")
    assert proc.returncode != 0
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("make study:")]
    assert f"NAME='{name}' is not a preset in conf/experiment; allowed: " in line
    assert "ablation_blur_d" in line.split("allowed: ")[1].split()
