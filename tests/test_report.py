"""genlab-report on small synthetic sweeps with known numbers."""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import statistics

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from genlab import report, runs
from genlab.report import figures, groups, load

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
    # a column's numbers at the decimals of its finest interval, the std to two significant
    # digits: val/elbo's stds are 1.49 and 1.80, so one decimal in every row
    assert statistics.fmean(ELBO[1].values()) == -210.625
    assert f"| -210.6 ± {statistics.stdev(ELBO[1].values()):.2g} (4) |" in markdown
    assert f"| {statistics.fmean(ELBO[4].values()):.1f} ± 1.8 (3) |" in markdown
    # a column without spread: four significant digits
    assert f"val/fid [{INCEPTION}]" in markdown and f"| {FID[1][3]:.2f} (1) |" in markdown

    # Every broken file is named, on stderr and in the markdown, and nothing else is.
    err = capsys.readouterr().err
    names = [bad["summary"] / "summary.json", bad["no_summary"] / "summary.json", bad["csv"], bad["png"]]
    for path in names:
        assert f"skipped: {path}: " in err, path
        assert f"- skipped: {path}: " in markdown, path
    assert err.count("skipped:") == len(names)
    assert "runs not averaged" in markdown.lower() and "diverged (seed 4)" in markdown


def read_runs(out):
    with open(out / "runs.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_runs_csv_holds_every_run_and_the_table_is_computed_from_it(sweep, tmp_path):
    root, _ = sweep
    out = tmp_path / "report"
    assert report.main([str(root), "--out", str(out)]) == 0
    per_run = read_runs(out)
    a, b = "corruption.kind=blur, model.beta=1", "corruption.kind=noise, model.beta=4"
    # every readable run, ok or not, once; the two unreadable ones are skipped
    assert len(per_run) == len(ELBO[1]) + len(ELBO[4]) + 2
    assert list(per_run[0])[:5] == ["configuration", "corruption.kind", "model.beta", "seed", "status"]
    assert list(per_run[0])[-1] == "run"
    cnn = f"val/fid [{GENLAB_CNN}]"
    for row in per_run:
        beta, seed = int(row["model.beta"]), int(row["seed"])
        assert row["configuration"] == (a if beta == 1 else b)
        assert os.path.dirname(row["run"]) == str(root)  # the run's folder
        if row["status"] == "ok":
            assert float(row["val/elbo"]) == ELBO[beta][seed]
            assert float(row["test/elbo"]) == TEST_ELBO[beta][seed]
            fid = row[cnn] or row[f"val/fid [{INCEPTION}]"]
            assert float(fid) == FID[beta][seed]
    # the failed run's value is evidence, kept with its status; the diverged run's NaN too
    failed = [r for r in per_run if r["status"] == "failed"]
    assert [(r["seed"], float(r["val/elbo"])) for r in failed] == [("3", -1e9)]
    assert [r["val/elbo"] for r in per_run if r["status"] == "diverged"] == ["nan"]

    # summary.csv's numbers follow from runs.csv alone
    table = read_table(out)
    for name, row in table.items():
        members = [r for r in per_run if r["configuration"] == name]
        assert int(row["n_ok"]) == sum(r["status"] == "ok" for r in members)
        for col in ("val/elbo", "test/elbo", cnn):
            values = [float(r[col]) for r in members if r["status"] == "ok" and r[col]]
            assert_stats(row, col, values)


def test_baseline_gives_welch_intervals_and_paired_seeds(sweep, tmp_path):
    from scipy.stats import ttest_ind

    root, _ = sweep
    out = tmp_path / "report"
    assert report.main([str(root), "--out", str(out), "--baseline", "model.beta=1.0", "--html"]) == 0
    table = read_table(out)
    a, b = "corruption.kind=blur, model.beta=1", "corruption.kind=noise, model.beta=4"
    assert all(v == "" for k, v in table[a].items() if k.endswith((" diff", " p", " paired")))
    ours, theirs = list(ELBO[4].values()), list(ELBO[1].values())
    ref = ttest_ind(ours, theirs, equal_var=False)
    row = table[b]
    assert float(row["val/elbo diff"]) == pytest.approx(statistics.fmean(ours) - statistics.fmean(theirs))
    assert float(row["val/elbo p"]) == pytest.approx(ref.pvalue, rel=1e-9)
    ci = ref.confidence_interval(0.95)
    assert float(row["val/elbo diff low"]) == pytest.approx(ci.low)
    assert float(row["val/elbo diff high"]) == pytest.approx(ci.high)
    # seeds 0, 1, 2 ran ok in both; beta=4 is above beta=1 in each (seed 3 of beta=1 pairs with
    # a failed run, which is not a value)
    assert (row["val/elbo higher"], row["val/elbo lower"], row["val/elbo paired"]) == ("3", "0", "3")
    # the inception FID: one value against none on beta=4's side, no comparison
    assert row[f"val/fid [{INCEPTION}] diff"] == ""

    markdown = (out / "summary.md").read_text()
    assert "## Differences from the baseline: corruption.kind=blur, model.beta=1" in markdown
    diff, lo, hi = (float(row[f"val/elbo {k}"]) for k in ("diff", "diff low", "diff high"))
    cell = f"{diff:+.4g} [{lo:+.4g}, {hi:+.4g}], p = {ref.pvalue:.2g}; 3↑ 0↓ of 3 seeds"
    assert f"| {b} | " in markdown and cell in markdown
    page = (out / "report.html").read_text()
    assert '<table id="baseline" class="sortable">' in page and cell in page
    for seed, value in ELBO[4].items():  # each run's own values, beside its folder, at the
        # decimals of their column in the table (one: its finest std is 1.49)
        assert f"<tr><td>{seed}</td><td>ok</td>" in page and f"<td>{value:.1f}</td>" in page


@pytest.mark.parametrize(("baseline", "message"), [
    (["model.beta"], "--baseline 'model.beta': expected KEY=VALUE"),
    (["model.nope=1"], "'model.nope' is not a key of the table; allowed: corruption.kind, model.beta"),
    (["model.beta=3"], "--baseline model.beta=3 matches no configuration; allowed: model.beta: 1, 4"),
    (["data.name=fmnist"], "matches 2 configurations (model.beta=1, data.name=fmnist; model.beta=4, "
                           "data.name=fmnist); add a KEY=VALUE of model.beta to pick one"),
])
def test_a_baseline_that_picks_no_single_configuration_is_a_user_error(sweep, tmp_path, capsys,
                                                                        baseline, message):
    root, _ = sweep
    out = tmp_path / "report"
    group_by = ["--group-by", "model.beta", "data.name"] if "data.name" in baseline[0] else []
    assert report.main([str(root), "--out", str(out), *group_by, "--baseline", *baseline]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("genlab-report: error: ") and message in err
    assert not out.exists()
    # two pairs single it out
    assert report.main([str(root), "--out", str(out), "--group-by", "model.beta", "data.name",
                        "--baseline", "data.name=fmnist", "model.beta=4"]) == 0


def test_figures_exist(sweep, tmp_path):
    root, _ = sweep
    out = tmp_path / "report"
    assert report.main([str(root), "--out", str(out), "--x", "model.beta",
                        "--metrics", "val/elbo", "val/fid", "--group-by", "model.beta", "data.name",
                        "--step-metric", "val/elbo", "train/loss"]) == 0
    expected = ["curve_val_elbo", "curve_train_loss", "samples", "val_elbo_vs_model.beta",
                f"val_fid_{GENLAB_CNN}_vs_model.beta", f"val_fid_{INCEPTION}_vs_model.beta"]
    for name in expected:
        for ext in ("png", "pdf"):
            assert (out / f"{name}.{ext}").stat().st_size > 1000, f"{name}.{ext}"
        assert f"({name}.png)" in (out / "summary.md").read_text()
    assert set(read_table(out)["model.beta=1, data.name=fmnist"]) >= {"val/elbo mean", f"val/fid [{INCEPTION}] n"}
    assert "test/elbo mean" not in read_table(out)["model.beta=1, data.name=fmnist"]  # --metrics

    # A report rebuilt from the same runs writes the same figures, byte for byte (no dates in
    # the PDFs), so re-reporting a study changes no committed file that did not change.
    again = tmp_path / "again"
    assert report.main([str(root), "--out", str(again), "--x", "model.beta",
                        "--metrics", "val/elbo", "val/fid", "--group-by", "model.beta", "data.name",
                        "--step-metric", "val/elbo", "train/loss"]) == 0
    for name in expected:
        for ext in ("png", "pdf"):
            assert (out / f"{name}.{ext}").read_bytes() == (again / f"{name}.{ext}").read_bytes()


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
    assert list(read_table(out)) == [f"model.nope={load.MISSING}"]


def test_a_component_given_as_a_mapping_is_keyed_by_its_name_and_its_settings(tmp_path):
    """A model component is a string (`model.d_mode: plain`) or a mapping with a name
    (`model.d_mode: {name: noise_head, aux_weight_d: 1.0}`): either way model.d_mode is its name,
    and the mapping's other keys are model.d_mode.aux_weight_d, ... for grouping, labels, --x
    and --baseline. A top-level group's name (data.name) keeps its key."""
    config = {"seed": 0, "data": {"name": "digits"},
              "model": {"name": "vae", "d_mode": {"name": "noise_head", "aux_weight_d": 1.0}}}
    assert load.lookup(config, "model.d_mode") == "noise_head"
    assert load.lookup(config, "model.d_mode.aux_weight_d") == 1.0
    assert load.lookup({"model": {"d_mode": "plain"}}, "model.d_mode") == "plain"
    assert load.lookup(config, "data.name") == "digits"
    assert groups.flat(config) == {"data.name": "digits", "model.name": "vae",
                                   "model.d_mode": "noise_head", "model.d_mode.aux_weight_d": 1}
    # a name that is an interpolation is resolved, as any value is
    arms = {**config, "arm": "b", "arms": {"b": "noise_head"},
            "model": {"d_mode": {"name": "${arms.${arm}}", "aux_weight_d": 0.5}}}
    assert load.lookup(arms, "model.d_mode") == "noise_head"

    root = tmp_path / "sweep"
    modes = {"plain": "plain", "head1": {"name": "noise_head", "aux_weight_d": 1.0},
             "head05": {"name": "noise_head", "aux_weight_d": 0.5}}
    spelled = {"plain": "plain", "head1": "{name:noise_head,aux_weight_d:1.0}",
               "head05": "{name:noise_head,aux_weight_d:0.5}"}
    elbo = {"plain": -200.0, "head1": -190.0, "head05": -195.0}
    for job, (arm, seed) in enumerate((a, s) for a in modes for s in (0, 1)):
        run = make_run(root, str(job), 1, seed, {"status": "ok", "val/elbo": elbo[arm] - seed},
                       curve=False, samples=False)
        config = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
        config["model"]["d_mode"] = modes[arm]
        write_config(run, config)
        (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(
            [f"model.d_mode={spelled[arm]}", f"seed={seed}"]))

    # by config (labelled by the overrides): the mapping's name and settings, each its own column
    out = tmp_path / "report"
    assert report.main([str(root), "--out", str(out), "--baseline", "model.d_mode=plain",
                        "--x", "model.d_mode"]) == 0
    table = read_table(out)
    head05, head1 = (f"model.d_mode=noise_head, model.d_mode.aux_weight_d={w}" for w in ("0.5", "1.0"))
    assert list(table) == [head05, head1, "model.d_mode=plain"]
    assert [(r["model.d_mode"], r["model.d_mode.aux_weight_d"]) for r in table.values()] == \
        [("noise_head", "0.5"), ("noise_head", "1.0"), ("plain", "")]
    assert float(table[head1]["val/elbo diff"]) == pytest.approx(10.0)  # against plain
    assert (out / "val_elbo_vs_model.d_mode.png").is_file()  # x: the components' names

    # --group-by the component: its name, the settings pooled and named in a note
    assert report.main([str(root), "--out", str(out), "--group-by", "model.d_mode",
                        "--baseline", "model.d_mode=plain"]) == 0
    table = read_table(out)
    assert list(table) == ["model.d_mode=noise_head", "model.d_mode=plain"]
    assert table["model.d_mode=noise_head"]["n_ok"] == "4"
    assert "model.d_mode=noise_head pools 2 distinct configurations; they differ in " \
           "model.d_mode.aux_weight_d" in (out / "summary.md").read_text()
    assert report.main([str(root), "--out", str(out), "--group-by", "model.d_mode.aux_weight_d"]) == 0
    assert list(read_table(out)) == ["model.d_mode.aux_weight_d=0.5", "model.d_mode.aux_weight_d=1.0",
                                     f"model.d_mode.aux_weight_d={load.MISSING}"]


def test_group_by_resolves_a_presets_interpolation(tmp_path):
    # a preset that sweeps named arms saves `model.k: ${arms.${arm}.k}`: grouping by model.k
    # means the value each run ran with
    root = tmp_path / "sweep"
    for job, (arm, seed) in enumerate([("a", 0), ("a", 1), ("b", 0)]):
        run = make_run(root, str(job), 1, seed, {"status": "ok", "val/elbo": -1.0 - job},
                       curve=False, samples=False)
        config = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
        config["arm"], config["arms"] = arm, {"a": {"k": 5}, "b": {"k": 50}}
        config["model"]["k"] = "${arms.${arm}.k}"
        write_config(run, config)
    out = tmp_path / "report"
    assert report.main([str(root), "--out", str(out), "--group-by", "model.k"]) == 0
    table = read_table(out)
    assert list(table) == ["model.k=5", "model.k=50"]
    assert table["model.k=5"]["n_ok"] == "2"


def test_curve_reads_sparse_lightning_csv(tmp_path):
    path = tmp_path / "metrics.csv"
    write_metrics_csv(path, final=-100.0)
    assert runs.read_curve(path.parent, "val/elbo") == {s: curve_value(-100.0, s) for s in STEPS}
    assert runs.read_curve(path.parent, "val/absent") == {}


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
        cfg["report"] = {"group_by": ["model.beta"], "metrics": ["test/elbo"],
                         "step_metric": "train/loss",  # one metric, not a list: also allowed
                         "baseline": "model.beta=4"}
        cfg_path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "preset"
    assert report.main([str(root), "--out", str(out)]) == 0
    assert (out / "curve_train_loss.png").is_file() and not (out / "curve_val_elbo.png").exists()
    with open(out / "summary.csv") as f:
        header = next(csv.reader(f))
    assert header[:2] == ["configuration", "model.beta"]
    assert "test/elbo mean" in header and "val/elbo mean" not in header
    assert "test/elbo diff" in header and read_table(out)["model.beta=1"]["test/elbo diff"] != ""
    # a preset's baseline that this sweep does not hold (a study run in part): a note, no error
    assert report.main([str(root), "--out", str(out), "--group-by", "corruption.kind"]) == 0
    assert "no comparison with the preset's report.baseline: --baseline 'model.beta=4': " \
           "'model.beta' is not a key of the table" in (out / "summary.md").read_text()
    out = tmp_path / "args"
    assert report.main([str(root), "--out", str(out), "--metrics", "val/elbo"]) == 0
    with open(out / "summary.csv") as f:
        header = next(csv.reader(f))
    assert "val/elbo mean" in header and "test/elbo mean" not in header


def test_curve_shows_epochs_only_and_marks_the_best_checkpoint(tmp_path):
    # genlab-train validates the best checkpoint after training; Lightning logs that under the
    # epoch after the last one trained. It must not become the curve's last point.
    root, best = tmp_path / "sweep", {0: -300.0, 1: -304.0}  # an early epoch was best
    for seed in (0, 1):
        run = make_run(root, str(seed), 1, seed, {"status": "ok", "val/elbo": best[seed],
                                                  "epochs": 4}, curve=False)
        write_metrics_csv(run / "metrics.csv", final=-100.0 - seed)
        with open(run / "metrics.csv", "a", newline="") as f:
            csv.writer(f).writerow([4, STEPS[-1] + 1, "", best[seed]])  # write_metrics_csv: epoch 0-3
    grouped = groups.group_runs(load.load_runs([str(root)]).runs, None).groups
    (curve,) = figures.curve_series(grouped, "val/elbo").series
    assert curve.steps == list(STEPS) and curve.n == 2
    assert curve.mean == pytest.approx([statistics.fmean([curve_value(-100.0, s), curve_value(-101.0, s)])
                                        for s in STEPS])
    assert curve.std == pytest.approx([statistics.stdev([curve_value(-100.0, s), curve_value(-101.0, s)])
                                       for s in STEPS])
    assert curve.best_mean == pytest.approx(statistics.fmean(best.values()))
    assert curve.best_std == pytest.approx(statistics.stdev(best.values()))

    ax = figures.curve_figure([curve], "val/elbo").axes[0]
    line = ax.lines[0]
    assert list(line.get_xdata()) == list(STEPS)  # per-epoch values only: no drop at the end
    assert list(line.get_ydata()) == pytest.approx(curve.mean)
    stars = [ln for ln in ax.lines if ln.get_marker() == "*" and len(ln.get_xdata())]
    assert [(list(s.get_xdata()), list(s.get_ydata())) for s in stars] == [([STEPS[-1]], [curve.best_mean])]
    assert stars[0].get_linestyle() == "None"  # a marker apart from the line
    assert "best checkpoint, final validation" in [t.get_text() for t in ax.get_legend().get_texts()]

    # A metric the summaries lack (a training metric logged per batch): no star, and no legend
    # entry or title promising one.
    ax = figures.curve_figure([dataclasses.replace(curve, best_mean=None, best_std=None)],
                             "train/loss").axes[0]
    assert not [ln for ln in ax.lines if ln.get_marker() == "*"]
    assert "best checkpoint, final validation" not in [t.get_text() for t in ax.get_legend().get_texts()]
    assert "★" not in ax.get_title()


def test_curve_figure_many_configurations_and_a_diverging_one():
    """Eleven configurations get eleven colours, and one whose values dwarf the rest puts the y
    axis on a log scale so that the others stay readable; ordinary values keep a linear axis."""
    steps = [10, 20, 30]
    tame = [figures.Curve(f"arm={i}", steps, [4.0 + i / 10, 3.0, 2.5], None, 1, 2.5, None)
            for i in range(10)]
    wild = figures.Curve("arm=wild", steps, [900.0, 700.0, 800.0], None, 1, 500.0, None)
    ax = figures.curve_figure([*tame, wild], "val/stat_fd").axes[0]
    assert ax.get_yscale() == "log"
    lines = [ln for ln in ax.lines if len(ln.get_xdata()) == len(steps)]
    assert len(lines) == 11 and len({ln.get_color() for ln in lines}) == 11
    assert figures.curve_figure(tame[:3], "val/stat_fd").axes[0].get_yscale() == "linear"


def write_config(run, config):
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))


def test_one_row_per_distinct_configuration(tmp_path, capsys):
    root = tmp_path / "sweep"
    # beta=1 and beta=1.0: two swept settings, one configuration -> one row, and a note
    for job, (spelling, seed) in enumerate([("1", 0), ("1.0", 1), ("1", 1), ("4", 0)]):
        run = make_run(root, str(job), 4 if spelling == "4" else 1, seed,
                       {"status": "ok", "val/elbo": -200.0 - job}, curve=False, samples=False)
        (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(
            [f"model.beta={spelling}", f"seed={seed}", f"paths.log_dir=/elsewhere/{job}", "resume=true"]))
        config = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
        config["model"]["beta"] = float(spelling)
        config["corruption"]["kind"] = "blur"
        config["paths"], config["resume"] = {"log_dir": f"/elsewhere/{job}"}, job % 2 == 0
        write_config(run, config)
    out = tmp_path / "report"
    assert report.main([str(root), "--out", str(out)]) == 0
    table = read_table(out)
    assert list(table) == ["model.beta=1", "model.beta=4"]
    assert table["model.beta=1"]["n_ok"] == "3"
    assert_stats(table["model.beta=1"], "val/elbo", [-200.0, -201.0, -202.0])
    markdown = (out / "summary.md").read_text()
    assert "identical configurations, shown as one row: model.beta=1 and model.beta=1.0" in markdown

    # The same overrides naming two different configs (a preset edited between two parts of a
    # sweep): two rows, told apart by the key that differs.
    config = yaml.safe_load((root / "3" / ".hydra" / "config.yaml").read_text())
    config["model"]["lr"] = 0.1
    write_config(root / "3", config)
    (root / "3" / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["model.beta=4"]))
    other = make_run(root, "4", 4, 1, {"status": "ok", "val/elbo": -1.0}, curve=False, samples=False)
    write_config(other, {**config, "model": {**config["model"], "lr": 0.2}, "seed": 1})
    (root / "4" / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["model.beta=4", "seed=1"]))
    assert report.main([str(root), "--out", str(out)]) == 0
    assert list(read_table(out)) == ["model.beta=1", "model.beta=4", "model.beta=4, model.lr=0.2"]
    assert "model.beta=4 names runs of different configurations (they differ in model.lr)" in \
        (out / "summary.md").read_text()

    # --group-by may pool configurations on purpose; the report names what differs in a row
    assert report.main([str(root), "--out", str(out), "--group-by", "corruption.kind"]) == 0
    assert "corruption.kind=blur pools 3 distinct configurations; they differ in model.beta, " \
           "model.lr" in (out / "summary.md").read_text()


def test_sample_figure_shows_only_generated_samples(sweep):
    root, bad = sweep
    grouped = groups.group_runs(load.load_runs([str(root)]).runs, None).groups
    grids = figures.final_grids(grouped)
    assert f"skipped: {bad['png']}: unreadable image" in grids.skipped[-1]
    fig = figures.samples_figure(grouped, grids.images)
    shown = [ax.images[0].get_array() for ax in fig.axes]
    titles = [ax.get_title() for ax in fig.axes]
    # beta=1: seed 0's grid is broken, so seed 1's; beta=4: seed 0. Never the newer decoy grid.
    for image, title, (run, seed) in zip(shown, titles, [("1", 1), ("4", 0)], strict=True):
        expected = np.asarray(Image.open(root / run / "samples" / "generated_final.png")) / 255
        decoy = np.asarray(Image.open(root / run / "samples" / "degraded_real_final.png")) / 255
        assert np.allclose(image, expected) and not np.allclose(image, decoy)
        assert f"generated samples, seed {seed}" in title

    # Each grid is drawn at its own size: its pixels appear in the saved PNG, neither moved nor
    # scaled (the test grids step by 2 grey levels a pixel; the colour map may round by 1).
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=figures.DPI)
    png = np.asarray(Image.open(buffer).convert("L"))
    for ax, image in zip(fig.axes, shown, strict=True):
        box = ax.get_position()
        left, top = round(box.x0 * png.shape[1]), round((1 - box.y1) * png.shape[0])
        h, w = image.shape
        drawn = png[top:top + h, left:left + w].astype(int)
        assert np.abs(drawn - np.round(image * 255)).max() <= 1


def test_grids_show_another_named_grid_per_configuration(sweep, tmp_path, capsys):
    root, _ = sweep
    out = tmp_path / "report"
    assert report.main([str(root), "--out", str(out), "--grids", "degraded_real"]) == 0
    assert (out / "degraded_real.png").is_file() and (out / "degraded_real.pdf").is_file()
    assert "![degraded_real](degraded_real.png)" in (out / "summary.md").read_text()
    grouped = groups.group_runs(load.load_runs([str(root)]).runs, None).groups
    fig = figures.samples_figure(grouped, figures.final_grids(grouped, "degraded_real").images,
                                 "degraded_real")
    # the first ok seed of each configuration: beta=1 seed 0 (its generated grid is broken, this
    # one is not), beta=4 seed 0; the panel is that grid, not the generated samples
    for ax, run in zip(fig.axes, ["0", "4"], strict=True):
        expected = np.asarray(Image.open(root / run / "samples" / "degraded_real_final.png")) / 255
        assert np.allclose(ax.images[0].get_array(), expected)
        assert "degraded real, seed 0" in ax.get_title()

    # a name no run has is refused in one line that lists the grids the runs do have
    capsys.readouterr()
    assert report.main([str(root), "--out", str(tmp_path / "r2"), "--grids", "traversal"]) == 2
    err = capsys.readouterr().err
    assert "--grids 'traversal': no run has samples/traversal_final.png; allowed: " \
           "degraded_real, generated" in err
    assert not (tmp_path / "r2").exists()


@pytest.mark.parametrize("model", ["vae", "dae", "dcgan", "restoration_gan", "rbm"])
def test_every_family_writes_generated_samples_under_one_name(model, tmp_path):
    """The sample-grid callback writes generate(n) as samples/generated_*.png for every family,
    the same draw at every epoch, and leaves the run's random stream where it was; the family's
    own grids (reconstructions, chains, degraded real images) keep their own names."""
    from types import SimpleNamespace

    from conftest import make_cfg

    from genlab.callbacks.samples import SampleGrids
    from genlab.data import build_datamodule
    from genlab.models import build_model

    cfg = make_cfg(tmp_path, "data=digits", f"model={model}", "corruption=blur")
    dm = build_datamodule(cfg.data)
    dm.setup()
    module = build_model(cfg.model, dm.image_shape)
    trainer = SimpleNamespace(datamodule=dm, default_root_dir=str(tmp_path), loggers=[], global_step=0)
    callback = SampleGrids(n=16, seed=3)

    torch.manual_seed(0)
    state = torch.get_rng_state()
    paths = callback.write(trainer, module, "epoch000")
    assert torch.equal(torch.get_rng_state(), state)
    names = [p.name for p in paths]
    assert names[0] == "generated_epoch000.png" and names.count("generated_epoch000.png") == 1
    callback.write(trainer, module, "final")
    first, final = (np.asarray(Image.open(tmp_path / "samples" / f"generated_{t}.png"))
                    for t in ("epoch000", "final"))
    assert np.array_equal(first, final)  # same weights, same noise: the same grid

    module.eval()  # as the callback draws them (batch norm on running statistics)
    torch.manual_seed(3)
    expected = module.generate(16)
    module.train()
    grids = callback.grids(trainer, module)
    assert module.training
    assert torch.equal(grids["generated"], expected)
    assert 0 <= float(expected.min()) and float(expected.max()) <= 1


def test_written_files_get_the_usual_permissions(tmp_path):
    import os
    import stat

    from genlab.runs import atomic_write_text

    path = tmp_path / "summary.md"
    atomic_write_text(path, "x\n")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # readable by others, as open() makes it


def test_compact_png_keeps_every_pixel_in_fewer_bytes(tmp_path):
    # opaque RGBA pictures as matplotlib writes them: one grey (a sample grid), one in colour
    grey = np.add.outer(np.arange(64), np.arange(64)).astype(np.uint8) * 3
    opaque = np.full_like(grey, 255)
    colour = np.stack([grey, grey[::-1], grey.T, opaque], -1)
    for pixels, mode in [(np.stack([grey] * 3 + [opaque], -1), "L"), (colour, "RGB")]:
        path = tmp_path / f"{mode}.png"
        Image.fromarray(pixels).save(path, compress_level=0)
        small = figures.compact_png(path.read_bytes())
        assert len(small) < path.stat().st_size
        back = Image.open(io.BytesIO(small))
        assert back.mode == mode
        assert np.array_equal(np.asarray(back.convert("RGBA")), np.asarray(Image.open(path).convert("RGBA")))


def test_lookup_walks_through_a_node_set_by_interpolation():
    """A preset's `objective: ${arms.${arm}}` is saved unresolved; its settings are still keys."""
    from genlab.report.load import MISSING, lookup

    config = {"arm": "iwae_k5", "arms": {"iwae_k5": {"name": "iwae", "k": 5}},
              "model": {"objective": "${arms.${arm}}"}}
    assert lookup(config, "model.objective.k") == 5
    assert lookup(config, "model.objective") == "iwae"
    assert lookup(config, "model.objective.beta") is MISSING


def test_a_metric_a_run_could_not_measure_is_left_out_of_its_mean():
    """A NaN (e.g. val/kl_aggregate where the codes cannot tell it) is no value: the mean and the
    interval are over the runs that measured it, and a point nobody measured stays empty."""
    from genlab.stats import ok_values

    assert groups.mean_std([1.0, math.nan, 3.0]) == (2.0, pytest.approx(math.sqrt(2)))
    assert groups.mean_std([math.nan]) == (None, None)
    members = [{"seed": 0, "status": "ok", "m": math.nan}, {"seed": 1, "status": "ok", "m": 2.0}]
    assert ok_values(members, "m") == [(1, 2.0)]
