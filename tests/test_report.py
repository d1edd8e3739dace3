"""genlab-report on small synthetic sweeps with known numbers."""

from __future__ import annotations

import csv
import math
import os
import statistics

import numpy as np
import pytest
import yaml
from PIL import Image

from genlab import report, runs

GENLAB_CNN, INCEPTION = "genlab-fmnist-cnn", "inception-v3"
# Two configurations (beta=1 with a blur corruption, beta=4 with noise) and their ok seeds.
ELBO = {1: {0: -210.0, 1: -212.5, 2: -209.0, 3: -211.0}, 4: {0: -205.0, 1: -204.0, 2: -207.5}}
TEST_ELBO = {1: {0: -211.0, 1: -213.0, 2: -210.5, 3: -212.0}, 4: {0: -206.0, 1: -205.5, 2: -208.0}}
FID = {1: {0: 30.1, 1: 31.5, 2: 29.7, 3: 55.0}, 4: {0: 25.0, 1: 24.2, 2: 26.1}}
KIND = {1: "blur", 4: "noise"}
STEPS = (100, 200, 300)


def extractor(beta: int, seed: int) -> str:
    return INCEPTION if (beta, seed) == (1, 3) else GENLAB_CNN  # one run measured elsewhere


def make_run(root, name, beta, seed, summary=None, overrides=True, curve=True, samples=True):
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    config = {"seed": seed, "model": {"name": "vae", "beta": beta, "d_mode": "noise"},
              "corruption": {"kind": KIND[beta], "level": 0.1}, "data": {"name": "fmnist"}}
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    if overrides:
        (run / ".hydra" / "overrides.yaml").write_text(
            yaml.safe_dump([f"model.beta={beta}", f"corruption.kind={KIND[beta]}", f"seed={seed}",
                            "hydra.launcher.n_jobs=2"]))
    if summary is not None:
        runs.write_summary(run, {"seed": seed, "git_commit": "abc123", **summary})
    if curve:
        write_metrics_csv(run / "metrics.csv", final=summary.get("val/elbo", 0.0) if summary else 0.0)
    if samples:
        (run / "samples").mkdir()
        for i, name in enumerate(["generated_epoch000", "generated_final", "degraded_real_final"]):
            png = run / "samples" / f"{name}.png"
            pattern = np.add.outer(np.arange(28), np.arange(28)) * (i + 1) + 40 * seed
            Image.fromarray((pattern % 256).astype(np.uint8)).save(png)
            os.utime(png, (1_000_000 + i, 1_000_000 + i))  # the decoy is the newest file
    return run


def curve_value(final: float, step: int) -> float:
    return final - (STEPS[-1] - step) / 10


def write_metrics_csv(path, final):
    """Lightning CSVLogger layout: one row per logging call, cells empty where nothing was logged."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "step", "train/loss", "val/elbo"])
        for step in range(50, STEPS[-1] + 1, 50):
            w.writerow([step // 100, step, 1.0 / step, ""])
            if step in STEPS:
                w.writerow([step // 100, step, "", curve_value(final, step)])


@pytest.fixture
def sweep(tmp_path):
    root = tmp_path / "sweep"
    job = iter(range(100))
    for beta, seeds in ELBO.items():
        for seed in seeds:
            make_run(root, str(next(job)), beta, seed, {
                "status": "ok", "val/elbo": ELBO[beta][seed], "test/elbo": TEST_ELBO[beta][seed],
                "val/fid": FID[beta][seed], "fid_extractor": extractor(beta, seed)})
    # Runs that must be counted apart, never averaged (their numbers would wreck the mean).
    make_run(root, str(next(job)), 4, 3, {"status": "failed", "val/elbo": -1e9})
    make_run(root, str(next(job)), 4, 4, {"status": "diverged", "val/elbo": math.nan})
    bad = {
        "summary": make_run(root, str(next(job)), 1, 5, {"status": "ok", "val/elbo": -1e9}),
        "no_summary": make_run(root, str(next(job)), 1, 6, None),
    }
    (bad["summary"] / "summary.json").write_text('{"status": "ok", "val/elbo": -2')  # cut short
    # Broken pieces inside otherwise good runs: the run still counts, the piece is named.
    bad["csv"] = root / "6" / "metrics.csv"  # beta=4, seed 2
    bad["csv"].write_bytes(b"\x00\x01garbage,more\nnot,a,metrics,file\n")
    bad["png"] = root / "0" / "samples" / "generated_final.png"  # beta=1, seed 0: the first ok seed
    bad["png"].write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    return root, bad


def read_table(out):
    with open(out / "summary.csv", newline="") as f:
        return {row["configuration"]: row for row in csv.DictReader(f)}


def assert_stats(row, column, values):
    assert float(row[f"{column} mean"]) == pytest.approx(statistics.fmean(values))
    if len(values) > 1:
        assert float(row[f"{column} std"]) == pytest.approx(statistics.stdev(values))
    else:
        assert row[f"{column} std"] == ""
    assert int(row[f"{column} n"]) == len(values)


def test_table_values_counts_and_extractor_columns(sweep, tmp_path, capsys):
    root, bad = sweep
    out = tmp_path / "report"
    assert report.main([str(root), "--out", str(out)]) == 0

    table = read_table(out)
    a, b = "corruption.kind=blur, model.beta=1", "corruption.kind=noise, model.beta=4"
    assert list(table) == [a, b]  # seed and hydra.* overrides are not part of the identity
    assert table[a]["model.beta"] == "1" and table[b]["corruption.kind"] == "noise"

    assert_stats(table[a], "val/elbo", list(ELBO[1].values()))
    assert_stats(table[b], "val/elbo", list(ELBO[4].values()))  # not the failed -1e9, not the NaN
    assert_stats(table[a], "test/elbo", list(TEST_ELBO[1].values()))
    assert_stats(table[b], "test/elbo", list(TEST_ELBO[4].values()))
    assert (table[a]["n_ok"], table[a]["n_failed"], table[a]["n_diverged"]) == ("4", "0", "0")
    assert (table[b]["n_ok"], table[b]["n_failed"], table[b]["n_diverged"]) == ("3", "1", "1")

    # FID from two extractors: two columns, never one; the inception run is alone in its own.
    assert "val/fid mean" not in table[a]
    assert_stats(table[a], f"val/fid [{GENLAB_CNN}]", [FID[1][s] for s in (0, 1, 2)])
    assert_stats(table[a], f"val/fid [{INCEPTION}]", [FID[1][3]])
    assert_stats(table[b], f"val/fid [{GENLAB_CNN}]", list(FID[4].values()))
    assert table[b][f"val/fid [{INCEPTION}] mean"] == "" and table[b][f"val/fid [{INCEPTION}] n"] == "0"

    markdown = (out / "summary.md").read_text()
    mean_a = statistics.fmean(ELBO[1].values())
    assert f"{mean_a:.5g} ± {statistics.stdev(ELBO[1].values()):.2g} (4)" in markdown
    assert f"val/fid [{INCEPTION}]" in markdown and f"{FID[1][3]:.5g} (1)" in markdown

    # Every broken file is named, on stderr and in the markdown, and nothing else is.
    err = capsys.readouterr().err
    names = [bad["summary"] / "summary.json", bad["no_summary"] / "summary.json", bad["csv"], bad["png"]]
    for path in names:
        assert f"skipped: {path}: " in err, path
        assert f"- skipped: {path}: " in markdown, path
    assert err.count("skipped:") == len(names)
    assert "runs not averaged" in markdown.lower() and "diverged (seed 4)" in markdown


def test_figures_exist(sweep, tmp_path):
    root, _ = sweep
    out = tmp_path / "report"
    assert report.main([str(root), "--out", str(out), "--x", "model.beta",
                        "--metrics", "val/elbo", "val/fid", "--group-by", "model.beta", "data.name"]) == 0
    expected = ["curve_val_elbo", "samples", "val_elbo_vs_model.beta",
                f"val_fid_{GENLAB_CNN}_vs_model.beta", f"val_fid_{INCEPTION}_vs_model.beta"]
    for name in expected:
        for ext in ("png", "pdf"):
            assert (out / f"{name}.{ext}").stat().st_size > 1000, f"{name}.{ext}"
        assert f"({name}.png)" in (out / "summary.md").read_text()
    assert set(read_table(out)["model.beta=1, data.name=fmnist"]) >= {"val/elbo mean", f"val/fid [{INCEPTION}] n"}
    assert "test/elbo mean" not in read_table(out)["model.beta=1, data.name=fmnist"]  # --metrics


def test_group_by_config_keys(sweep, tmp_path):
    root, _ = sweep
    out = tmp_path / "report"
    assert report.main([str(root), "--out", str(out), "--group-by", "model.d_mode"]) == 0
    (row,) = read_table(out).values()  # every run has d_mode=noise: one configuration
    assert row["configuration"] == "model.d_mode=noise"
    assert_stats(row, "val/elbo", [*ELBO[1].values(), *ELBO[4].values()])
    assert (row["n_ok"], row["n_failed"], row["n_diverged"]) == ("7", "1", "1")

    # A key no run has is a configuration value of its own, not an error.
    assert report.main([str(root), "--out", str(out), "--group-by", "model.nope"]) == 0
    assert list(read_table(out)) == [f"model.nope={report.MISSING}"]


def test_curve_reads_sparse_lightning_csv(tmp_path):
    path = tmp_path / "metrics.csv"
    write_metrics_csv(path, final=-100.0)
    assert report.read_curve(path, "val/elbo") == {s: curve_value(-100.0, s) for s in STEPS}
    assert report.read_curve(path, "val/absent") == {}


def test_run_without_overrides_is_the_default_configuration(tmp_path):
    make_run(tmp_path / "r", "0", 1, 0, {"status": "ok", "val/elbo": -1.0}, overrides=False)
    out = tmp_path / "report"
    assert report.main([str(tmp_path / "r"), "--out", str(out)]) == 0
    assert list(read_table(out)) == ["(defaults)"]


def test_no_readable_run_is_exit_2(tmp_path, capsys):
    assert report.main([str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert "no run could be read" in capsys.readouterr().err

    run = make_run(tmp_path / "sweep", "0", 1, 0, {"status": "ok"})
    (run / "summary.json").write_text("{not json")
    assert report.main([str(tmp_path / "sweep"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"skipped: {run / 'summary.json'}: corrupt or truncated" in err
    assert "no run could be read" in err
    assert not (tmp_path / "out" / "summary.md").exists()


def test_columns_and_grouping_come_from_the_study_preset(sweep, tmp_path):
    # a preset's `report:` block (here written into every run's resolved config) stands in for
    # the arguments; arguments given on the command line still win
    root, _ = sweep
    for cfg_path in root.glob("*/.hydra/config.yaml"):
        cfg = yaml.safe_load(cfg_path.read_text())
        cfg["report"] = {"group_by": ["model.beta"], "metrics": ["test/elbo"]}
        cfg_path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "preset"
    assert report.main([str(root), "--out", str(out)]) == 0
    with open(out / "summary.csv") as f:
        header = next(csv.reader(f))
    assert header[:2] == ["configuration", "model.beta"]
    assert "test/elbo mean" in header and "val/elbo mean" not in header
    out = tmp_path / "args"
    assert report.main([str(root), "--out", str(out), "--metrics", "val/elbo"]) == 0
    with open(out / "summary.csv") as f:
        header = next(csv.reader(f))
    assert "val/elbo mean" in header and "test/elbo mean" not in header
