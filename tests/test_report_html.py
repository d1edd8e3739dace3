"""genlab-report on a real (tiny) GAN sweep: the figures show what they claim, and report.html works
in a real browser (headless Chromium from Debian's `chromium` package, which `make install`
installs when run as root)."""

from __future__ import annotations

import csv
import re
import shutil
import statistics
import subprocess

import matplotlib.image
import numpy as np
import pytest
from conftest import run_cli

from genlab import report, runs
from genlab.report import figures, groups, load

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p),
                None)
EPOCHS = 3


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Four DCGAN runs on digits: d_mode plain and instance_noise (which also writes a grid of
    blurred real images, the decoy the sample figure once showed), each with the learning rate
    spelled two ways, which Hydra turns into the same override: the same run twice."""
    root = tmp_path_factory.mktemp("sweep")
    run_cli("-m", "model=dcgan", "data=digits", "debug=smoke", "logger=csv",
            "callbacks.evaluation=null", f"trainer.max_epochs={EPOCHS}", "corruption=blur",
            "allow_unused=[corruption]",  # d_mode=plain ignores the blur
            "model.d_mode=plain,instance_noise", "model.lr=0.0002,2e-4", "seed=0",
            f"paths.log_dir={root}", cwd=root)
    (sweep_dir,) = root.glob("*/multiruns/*")
    return sweep_dir


@pytest.fixture(scope="module")
def html_report(sweep, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    assert report.main([str(sweep), "--out", str(out), "--html", "--baseline", "model.d_mode=plain"]) == 0
    return out


def val_rows(run, metric):
    with open(run / "metrics.csv", newline="") as f:
        return [r for r in csv.DictReader(f) if r.get(metric)]


def test_real_sweep_report(sweep, html_report):
    loaded = load.load_runs([str(sweep)]).runs
    assert len(loaded) == 4 and all(r.status == "ok" for r in loaded)
    with open(html_report / "summary.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [row["model.d_mode"] for row in table] == ["instance_noise", "plain"]
    assert [row["configuration"] for row in table] == ["model.d_mode=instance_noise", "model.d_mode=plain"]
    assert all(row["n_ok"] == "2" for row in table)  # two spellings of one lr: one row each
    markdown = (html_report / "summary.md").read_text()
    assert "- every row: callbacks.evaluation=null, corruption=blur, data=digits, " in markdown
    for mode in ("instance_noise", "plain"):
        assert f"- model.d_mode={mode}: seed 0 ran more than once, the same run repeated" in markdown

    # The step curve: one point per trained epoch, never the best checkpoint's validation that
    # genlab-train logs after training; that value is the separate marker.
    metric = loaded[0].config["objective"]["metric"]
    grouped = groups.group_runs(loaded, None).groups
    for curve, members in zip(figures.curve_series(grouped, metric).series, grouped.values(), strict=True):
        for run in members:
            rows = val_rows(run.path, metric)
            assert len(rows) == EPOCHS + 1  # every epoch, then the best checkpoint's validation
            per_epoch = runs.read_curve(run.path, metric, run.summary["epochs"])
            assert list(per_epoch.values()) == [float(r[metric]) for r in rows[:EPOCHS]]
        assert len(curve.steps) == EPOCHS
        assert curve.best_mean == pytest.approx(statistics.fmean(r.summary[metric] for r in members))

    # The sample figure: each configuration's generated samples, never the blurred real images.
    images = figures.final_grids(grouped).images
    fig = figures.samples_figure(grouped, images)
    for ax, members in zip(fig.axes, grouped.values(), strict=True):
        samples = members[0].path / "samples"
        shown = ax.images[0].get_array()
        assert np.allclose(shown, matplotlib.image.imread(samples / "generated_final.png"))
        assert "generated samples" in ax.get_title()
        if members[0].config["model"]["d_mode"] == "instance_noise":
            decoy = matplotlib.image.imread(samples / "degraded_real_final.png")
            assert not np.allclose(shown, decoy)


# Run after the page's own scripts: record every image's decoded width, then sort the table by
# the metric column (a click, and a second click to reverse) and record the order of its values.
PROBE = """<script>
window.addEventListener("load", () => {
  const b = document.body.dataset;
  document.querySelectorAll("img").forEach(i => i.dataset.naturalWidth = i.naturalWidth);
  const th = [...document.querySelectorAll("#summary th")].find(h => h.textContent === "%s");
  const col = [...th.parentNode.children].indexOf(th);
  const order = () => [...document.querySelectorAll("#summary tbody tr")]
    .map(tr => tr.cells[col].dataset.value).join(",");
  th.click(); b.ascending = order();
  th.click(); b.descending = order();
  // the baseline table sorts by its own columns: the baseline's empty cell stays last
  const bh = [...document.querySelectorAll("#baseline th")].find(h => h.textContent === "%s");
  bh.click();
  b.baseline = [...document.querySelectorAll("#baseline tbody tr")]
    .map(tr => tr.cells[bh.cellIndex].dataset.value + "/" + tr.cells[0].dataset.value).join(",");
});
</script></body>"""


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install chromium)")
def test_html_report_in_headless_chromium(sweep, html_report, tmp_path):
    page = (html_report / "report.html").read_text()
    assert "http://" not in page and "https://" not in page  # nothing to fetch: opens offline
    assert page.count('src="data:image/png;base64,') == page.count("<img ")

    metric = runs.read_summary(runs.find_runs(sweep)[0])["objective"]
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", PROBE % (metric, metric), 1))
    browser = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               "--virtual-time-budget=10000"]
    dom = subprocess.run([*browser, "--dump-dom", probe.as_uri()], capture_output=True,
                         text=True, timeout=120).stdout

    body = re.search(r"<body([^>]*)>", dom).group(1)
    attrs = dict(re.findall(r'data-([a-z]+)="([^"]*)"', body))
    tbody = dom.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    assert tbody.count("<tr>") == 2  # one row per configuration
    widths = [int(w) for w in re.findall(r'data-natural-width="(\d+)"', dom)]
    # the curve and the sample figure, and every run's generated grid: all decoded
    assert len(widths) == 2 + 4 and min(widths) > 0
    ascending = [float(v) for v in attrs["ascending"].split(",")]
    assert ascending == sorted(ascending) and attrs["descending"].split(",") == attrs["ascending"].split(",")[::-1]
    with open(html_report / "summary.csv", newline="") as f:
        table = {row["model.d_mode"]: row for row in csv.DictReader(f)}
    expected = float(table["instance_noise"][f"{metric} mean"]) - float(table["plain"][f"{metric} mean"])
    assert attrs["baseline"] == f"{expected!r}/model.d_mode=instance_noise,/model.d_mode=plain"

    shot = tmp_path / "report.png"
    subprocess.run([*browser, "--window-size=1280,2000", f"--screenshot={shot}",
                    (html_report / "report.html").as_uri()], capture_output=True, timeout=120)
    image = matplotlib.image.imread(shot)
    assert image.shape[:2] == (2000, 1280)
    assert image[..., :3].std() > 0.05  # a page with content, not a blank one
