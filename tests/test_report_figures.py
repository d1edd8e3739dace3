"""genlab-report's figures looked at as pictures: on a small real VAE sweep, every figure has its
axis labels and legends, and no title, label or legend runs off the canvas; study figures against
a derived axis with named lines; the latent scatter coloured by class."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import yaml
from conftest import run_cli
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from test_report import make_run

from genlab import report, runs
from genlab.metrics.figures import aggregate_posterior_figure
from genlab.report import figures, groups, load, spec

PANELS = {"generated": "prior samples", "expost": "ex-post mixture samples",
          "reconstruction": "reconstructions"}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Two VAEs with a 2-D latent space on digits (beta 0.5 and 1), one seed, evaluated every
    epoch: their runs hold every grid the figures show (prior and ex-post samples,
    reconstructions, the aggregate posterior) and per-epoch curves."""
    root = tmp_path_factory.mktemp("sweep")
    run_cli("-m", "model=vae", "data=digits", "debug=smoke", "logger=csv", "model.latent_dim=2",
            "model.objective.beta=0.5,1", "seed=0", f"paths.log_dir={root}", cwd=root)
    (sweep_dir,) = root.glob("*/multiruns/*")
    return sweep_dir


def drawn(monkeypatch) -> dict[str, Figure]:
    """Every figure genlab-report saves, by name, as it saves them."""
    saved: dict[str, Figure] = {}
    save = figures.save

    def keep(fig, out, name):
        saved[name] = fig
        return save(fig, out, name)

    monkeypatch.setattr(figures, "save", keep)
    return saved


def assert_readable(name: str, fig: Figure) -> None:
    """Each plot's axes are labelled, a plot of several lines has a legend, and the figure's
    tight bounding box (every title, label, tick label and legend) lies within its canvas."""
    renderer = FigureCanvasAgg(fig).get_renderer()  # as savefig draws a PNG
    fig.draw(renderer)  # lays the figure out as savefig does
    canvas = fig.bbox
    box = fig.get_tightbbox(renderer).transformed(fig.dpi_scale_trans)  # inches -> pixels
    assert (box.x0 >= canvas.x0 - 1 and box.y0 >= canvas.y0 - 1 and box.x1 <= canvas.x1 + 1
            and box.y1 <= canvas.y1 + 1), f"{name}: drawn {box.bounds}, canvas {canvas.bounds}"
    for ax in fig.axes:
        if ax.images:  # a sample grid: no axes, a title or a column heading
            continue
        assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title(), name
        named = [h for h in ax.get_legend_handles_labels()[1] if not h.startswith("_")]
        if len(named) > 1:
            legend = ax.get_legend() or fig.legends[0]
            assert [t.get_text() for t in legend.get_texts()], name
        assert load.MISSING not in " ".join(named), name


def test_every_figure_of_a_real_sweep_is_labelled_and_fits_its_canvas(sweep, tmp_path, monkeypatch):
    for config in sweep.glob("*/.hydra/config.yaml"):  # the study preset's report block
        cfg = yaml.safe_load(config.read_text())
        cfg["report"] = {"x": {"key": "model.objective.beta", "label": "beta (the KL's weight)"},
                         "lines": {"by": "model.latent_dim", "names": {2: "2-D VAE"}},
                         "metrics": ["val/elbo", "val/fid", "val/fid_expost"],
                         "step_metric": ["val/elbo", "val/fid"], "panels": PANELS,
                         "grids": ["aggregate_posterior"]}
        config.write_text(yaml.safe_dump(cfg, sort_keys=False))  # the panels in their order
    saved = drawn(monkeypatch)
    out = tmp_path / "report"
    assert report.main([str(sweep), "--out", str(out), "--html"]) == 0
    extractor = "genlab-digits-cnn"
    assert set(saved) == {"curve_val_elbo", "curve_val_fid", "samples", "panels",
                            "aggregate_posterior", "val_elbo_vs_beta_the_KL_s_weight",
                            f"val_fid_{extractor}_vs_beta_the_KL_s_weight",
                            f"val_fid_expost_{extractor}_vs_beta_the_KL_s_weight"}
    for name, fig in saved.items():
        assert_readable(name, fig)
        assert (out / f"{name}.png").is_file() and f'alt="{name}"' in (out / "report.html").read_text()

    # the line is named in the study's words, over the axis's label
    ax = saved["val_elbo_vs_beta_the_KL_s_weight"].axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["2-D VAE (n=1)"]
    assert ax.get_xlabel() == "beta (the KL's weight)" and ax.get_ylabel() == "val/elbo"
    # the panels: one row per beta, the three grids of its seed in the preset's order
    fig = saved["panels"]
    assert [t.get_text().replace("\n", " ") for t in fig.texts[:3]] == list(PANELS.values())
    assert len(fig.axes) == 2 * 3
    shown = [ax.images[0].get_array() for ax in fig.axes[:3]]
    for image, grid in zip(shown, PANELS, strict=True):
        png = runs.read_grid(sweep / "0", grid)
        assert np.array_equal(image, png)


def test_a_one_run_report_prints_no_warning(sweep, tmp_path, capsys):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert report.main([str(sweep / "0"), "--out", str(tmp_path / "one"), "--html"]) == 0
        # a lone run's label is all its overrides: a legend that long once squashed the axes
        # ("constrained_layout not applied")
        long = ", ".join(f"model.key{i}=value{i}" for i in range(12))
        fig = figures.curve_figure([figures.Curve(long, [1, 2], [1.0, 2.0], None, 1, 2.0, None)],
                                  "val/elbo")
        fig.savefig(tmp_path / "long.png")
    assert [str(w.message) for w in caught] == []
    assert capsys.readouterr().err == ""


def test_metric_against_the_k_of_whichever_bound_one_line_per_bound(tmp_path):
    """iwae_table's axis: k = max(model.iwae_k, model.elbo_k), one line per bound with the k = 1
    run in both, legend in the study's words; no "(missing)" line, no stray points at k = 1."""
    arms = {"vae": (1, 1), "vae_k5": (1, 5), "iwae_k5": (5, 1), "iwae_k50": (50, 1)}
    loglik = {"vae": -100.0, "vae_k5": -99.0, "iwae_k5": -97.0, "iwae_k50": -95.0}
    root = tmp_path / "sweep"
    for job, arm in enumerate(arms):
        for seed in (0, 1):
            run = make_run(root, f"{job}_{seed}", 1, seed, {
                "status": "ok", "test/loglik": loglik[arm] - seed}, curve=False, samples=False)
            cfg = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
            cfg.update(arm=arm, arms={a: {"iwae_k": i, "elbo_k": e} for a, (i, e) in arms.items()})
            cfg["model"].update(iwae_k="${arms.${arm}.iwae_k}", elbo_k="${arms.${arm}.elbo_k}")
            (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    grouped = groups.group_runs(load.load_runs([str(root)]).runs, ["arm"]).groups
    axis = spec.parse_axis({"max": ["model.iwae_k", "model.elbo_k"], "label": "k",
                                      "log": True})
    lines = spec.parse_lines({"by": "arm", "names": {
        "vae": ["VAE", "IWAE"], "vae_k5": "VAE", "iwae_k5": "IWAE", "iwae_k50": "IWAE"}})
    points = figures.against_points(grouped, axis, "test/loglik", lines)
    assert points == {"VAE": {1: [-100.0, -101.0], 5: [-99.0, -100.0]},
                      "IWAE": {1: [-100.0, -101.0], 5: [-97.0, -98.0], 50: [-95.0, -96.0]}}
    fig = figures.against_figure(points, axis, "test/loglik")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["VAE (n=2)", "IWAE (n=2)"]
    assert ax.get_xscale() == "log" and ax.get_xlabel() == "k (log scale)"
    data = [bars.lines[0] for bars in ax.containers]  # each errorbar's line (not its caps)
    assert [line.get_xdata().tolist() for line in data] == [[1, 5], [1, 5, 50]]
    assert data[1].get_ydata().tolist() == [-100.5, -97.5, -95.5]
    assert_readable("test_loglik_vs_k", fig)


@pytest.mark.parametrize(("block", "message"), [
    ({"key": "model.beta", "max": ["a", "b"]}, "report.x: give exactly one of key"),
    ({"max": ["model.beta"]}, "report.x.max: expected a list of two or more dotted config keys"),
    ({"key": "model.beta", "scale": "log"}, "report.x: unknown key 'scale'; allowed: key, max, label, log"),
])
def test_a_bad_axis_is_one_line_naming_the_key(block, message):
    with pytest.raises(spec.SpecError, match=message.replace("(", r"\(")):
        spec.parse_axis(block)


def test_latent_scatter_coloured_by_class_with_a_legend():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(300) % 10
    mu = torch.randn(300, 16, generator=g, dtype=torch.float64) + labels[:, None].double() / 3
    names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
             "Bag", "Ankle boot"]
    fig = aggregate_posterior_figure(mu, mu + 0.1, "gaussian", labels, names)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == names
    for ax in fig.axes:  # ten colours, each class's points in its own
        colours = [tuple(c.get_facecolor()[0]) for c in ax.collections]
        assert len(colours) == 10 and len(set(colours)) == 10
        assert [len(c.get_offsets()) for c in ax.collections] == [30] * 10
        assert (ax.get_xlabel(), ax.get_ylabel()) == ("PC 1", "PC 2")  # 16-D: the principal plane
    assert_readable("aggregate_posterior", fig)
