"""genlab-report: run directories -> a results table (markdown and CSV) and figures.

    genlab-report DIR [DIR ...] --out OUTDIR [--metrics val/elbo test/elbo ...]
                  [--group-by model.d_mode corruption.kind ...] [--x KEY]
                  [--lines KEY] [--step-metric val/elbo train/elbo ...]
                  [--grids traversal_orientation ...] [--panels generated reconstruction ...]
                  [--baseline KEY=VALUE ...] [--html]

Reads nothing but what a run directory holds (see genlab.runs): `.hydra/config.yaml`,
`.hydra/overrides.yaml`, `summary.json`, `metrics.csv`, `samples/generated_final.png`, and tests
`run.lock` to tell a running run that a process trains now from one that stopped without an end
(genlab.runs.run_holder). Runs are
grouped into configurations: by default one per distinct saved config apart from the seed (and
keys that only say where or how a run started, NOT_CONFIGURATION), labelled by the run's
command-line overrides, so the seeds of one setting fall together and two swept settings that
resolve to the same config are one row (the report says so); with --group-by, the values of the
given dotted config keys. For every configuration and metric it reports mean, standard deviation
(n-1) and the number of ok seeds; failed, diverged, running and pruned runs are counted apart
and never averaged; a column's numbers are rounded alike, to two significant digits of its finest
interval (508 ± 210, 0.437 ± 0.011). FID-like metrics are split by the feature extractor that
produced them, so "val/fid"
becomes "val/fid [genlab-fmnist-cnn]": numbers from different extractors are not comparable.
With --baseline KEY=VALUE (one configuration), every other configuration also gets, per metric,
its difference from the baseline's mean with Welch's 95% interval and p-value, and the seeds it
shares with the baseline counted by which way they went (genlab.stats).

Writes runs.csv (one row per run: the keys that define its configuration, seed, status, every
metric of its summary and its folder; the table is computed from these rows), summary.csv,
summary.md, PNG and PDF figures (each step metric against the training step,
metrics against --x, a config key or a value derived from the config, with one line per --lines
value under the study's names for them; every configuration's generated samples, with --grids any
other named grid of the runs, such as a traversal, and with --panels several grids of one seed per
configuration side by side) and, with --html, report.html: one self-contained page with the
sortable table, the figures and each configuration's runs and samples.

A file that cannot be read (corrupt summary, malformed metrics.csv, broken PNG) is named on stderr
and in summary.md, and the report goes on; the exit status is 2 only when no run could be read.

The package's modules, one concern each:

- cli: the command line (main), the study preset's `report:` block, user errors;
- load: finding and reading runs (through genlab.runs), their metric values and config keys;
- groups: runs grouped into configurations, the table's statistics and the baseline comparison;
- spec: the figure settings of --x, --lines and --panels (or the preset's report.x, .lines, .panels);
- figures: every figure, and the PNG recompression;
- writers: runs.csv, summary.csv, summary.md and report.html (whose style and script are
  report.css and report.js, shipped in the package).
"""


from genlab.report.cli import main

__all__ = ["main"]
