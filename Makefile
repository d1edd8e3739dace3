# genlab: every target installs on first use (a venv in .venv), so a fresh clone needs only make.
PY      := .venv/bin/python
STAMP   := .venv/.installed
ARGS    ?=

.PHONY: install train test test-all bench sync lint clean

install: $(STAMP)

# Re-runs only when pyproject.toml changes; a second `make install` does nothing slow.
$(STAMP): pyproject.toml
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && [ ! -d /usr/share/datasets/fashion-mnist ]; then \
		echo "installing Debian package dataset-fashion-mnist"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	fi
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# The quickstart: a VAE on Fashion-MNIST on the CPU (experiment=quickstart), then its results.
train: install
	.venv/bin/genlab-train experiment=quickstart $(ARGS)

# The fast test set (CI runs this); `make test-all` adds the slow tests.
test: install
	$(PY) -m pytest -q $(ARGS)

test-all: install
	$(PY) -m pytest -q -m "slow or not slow" $(ARGS)

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
