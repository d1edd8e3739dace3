"""`make study NAME=<preset> SMOKE=1`: a study's sweep, then its HTML report, into a scratch folder."""

from __future__ import annotations

import csv
import json
import subprocess

import pytest
from conftest import REPO, make_cfg

# Each study's smoke pipeline, with the genlab-train arguments that narrow its grid to two runs (the
# pipeline, not the science). CI runs every one.
SMOKE_STUDIES = [
    pytest.param("ablation_blur_d", "seed=0 arm=plain,noise_head-blur"),
    pytest.param("gradient_noise", "seed=0 callbacks.gradient_noise.eta=0,0.3"),
    pytest.param("aevb_fig2", "seed=0 model.latent_dim=2,20"),
    pytest.param("iwae_table", "seed=0 arm=vae_k5,iwae_k5"),
    pytest.param("named_factor", "seed=0 arm=labelled_10,beta_vae"),
    pytest.param("prior_hole", "seed=0 model.objective.beta=1 arm=standard_normal,vamp"),
    pytest.param("reparam_uniform", "seed=0 model.latent_dim=2 model.posterior=gaussian,uniform"),
    pytest.param("dae_noise", "seed=0 arm=plain,masking-0p25"),
    pytest.param("d_head", "seed=0 model.d_mode=noise_head model.discriminator.head=global,patch"),
    pytest.param("beta_vae_mig", "seed=0 model.objective.beta=1,16"),
]


def test_every_study_is_smoke_tested_and_follows_the_fid_protocol(tmp_path):
    """experiments/README.md: every study's FID-type scores compare 10,000 generated images with
    the 10,000 test images (conf/study/fid.yaml); smoke runs shrink the count, not the split."""
    names = [p.values[0] for p in SMOKE_STUDIES]
    assert sorted(names) == sorted(p.parent.name for p in (REPO / "experiments").glob("*/README.md"))
    for name in names:
        for smoke, n in (([], 10000), (["debug=smoke"], 200)):
            metrics = make_cfg(tmp_path, f"experiment={name}", *smoke).metrics
            assert (metrics.n_samples, metrics.real_split) == (n, "test"), name


def make_study(*args: str, dry_run: bool = False) -> subprocess.CompletedProcess:
    cmd = ["make", "--no-print-directory", *(["-n"] if dry_run else []), "study", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)


@pytest.mark.parametrize(("name", "narrow"), SMOKE_STUDIES)
def test_study_smoke_pipeline(name, narrow, tmp_path):
    logs, results = tmp_path / "logs", tmp_path / "results"
    proc = make_study(f"NAME={name}", "SMOKE=1", f"STUDY_LOGS={logs}", f"STUDY_OUT={results}",
                      f"ARGS={narrow}")
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
    assert (results / "summary.md").stat().st_size > 0
    # the sample figure exactly when the runs generate images (the gradient-noise classifier does not)
    generates = any(sweep.glob("*/samples/generated_final.png"))
    assert (results / "samples.png").is_file() == generates
    assert generates == (name != "gradient_noise")
    # the preset's report.grids: one figure per named grid, besides the generated samples
    # named_factor: traversal_orientation; 2-D VAEs: the manifold and the aggregate posterior
    for grid in {"named_factor": ["traversal_orientation"], "aevb_fig2": ["manifold"],
                 "reparam_uniform": ["aggregate_posterior", "manifold"],
                 "prior_hole": ["aggregate_posterior"]}.get(name, []):
        assert (results / f"{grid}.png").is_file(), grid
        assert f'alt="{grid}"' in page
    # the figures a study's claim rests on (the presets' report blocks): prior_hole's samples
    # side by side, iwae_table's metrics against k, the GANs' FID per epoch before the criterion's
    for figure in {"prior_hole": ["panels"], "iwae_table": ["test_loglik_vs_k"],
                   "ablation_blur_d": ["curve_val_fid", "curve_val_stat_fd"],
                   "d_head": ["curve_val_fid", "curve_val_stat_fd"]}.get(name, []):
        assert (results / f"{figure}.png").is_file(), figure
        assert f'alt="{figure}"' in page
    if name in ("ablation_blur_d", "d_head"):
        assert page.index('alt="curve_val_fid"') < page.index('alt="curve_val_stat_fd"')


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
