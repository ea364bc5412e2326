# One place for the commands. `make book` and `make test` set everything up.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
# CPU builds by default (CI, laptops); the GPU book workflow passes
# CONSTRAINTS=constraints-gpu.txt EXTRAS=gpu.
CONSTRAINTS ?= constraints-cpu.txt
EXTRAS ?= cpu
STAMP := $(VENV)/.installed-$(EXTRAS)
BUDGET ?= quick
export BUDGET
# Keep TensorFlow's C++ and absl start-up lines out of logs and notebook outputs.
# TensorFlow 2.21 prints its oneDNN notice before absl reads TF_CPP_MIN_LOG_LEVEL;
# only turning the oneDNN graph rewrites off silences it (and makes CPU results
# independent of the processor's instruction set, which nbval needs).
export TF_CPP_MIN_LOG_LEVEL := 3
export TF_ENABLE_ONEDNN_OPTS := 0
export PYTHONHASHSEED := 0
# JAX takes GPU memory as it needs it, so three frameworks can share one GPU.
export XLA_PYTHON_CLIENT_PREALLOCATE := false

NOTEBOOKS := $(wildcard notebooks/*.ipynb)

.PHONY: help venv book test lint unit nbval site-check notebooks lab bench experiments clean

help:
	@echo "make book       build the HTML book into _build/html (executes every chapter)"
	@echo "make test       lint, unit/property/parity/serialization tests, nbval, site check"
	@echo "make site-check every built page in headless Chromium at 390 and 1,400 px (skipped"
	@echo "                without a Chromium); the pages of make book, or built from stored outputs"
	@echo "make notebooks  re-execute every notebook in place (refresh stored outputs)"
	@echo "make lab        JupyterLab on the notebooks"
	@echo "make bench      benchmarks against the bare layers: every round to results/bench-*.csv"
	@echo "                (BENCH_DEVICE=gpu: on the GPU, to results/bench-*-gpu.csv)"
	@echo "make experiments  the experiment grid and the map of regimes (BUDGET=quick|standard|full)"
	@echo "                into results/"
	@echo "make clean      remove build outputs (keeps .venv)"

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e ".[$(EXTRAS)]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3" >/dev/null
	touch $@

venv: $(STAMP)

book: $(STAMP)
	rm -rf _build
	$(BIN)/jupyter-book build . -W -n --keep-going
	@echo "book built: _build/html/index.html"

lint: $(STAMP)
	$(BIN)/ruff check reference_impl tests benchmarks notebooks tools _ext
	$(BIN)/ruff format --check reference_impl tests benchmarks notebooks tools _ext
	$(BIN)/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml

# Tests run in parallel, one worker per core. Unit tests are spread test by test, idle
# workers taking work from busy ones (a few slow tests would otherwise decide the wall
# time); a notebook stays whole in one worker: its cells share one kernel, in order.
WORKERS ?= $(shell nproc 2>/dev/null || echo 2)

unit: $(STAMP)
	# tests/ and the doctests of reference_impl (pyproject testpaths)
	$(BIN)/python -m pytest -q -n $(WORKERS) --dist worksteal

nbval: $(STAMP)
	$(BIN)/python -m pytest -n $(WORKERS) --dist loadfile --nbval $(NOTEBOOKS) \
	  --nbval-sanitize-with notebooks/sanitize.cfg -q

# Every page of the built book in headless Chromium at 390 and 1,400 px, offline: fails on
# a page that scrolls sideways, raw TeX, a broken image or link inside the site, a console
# error or a request to another host (tools/site_check.py). Without a Chromium it says it
# was skipped. It checks the book `make book` built when that is newer than every source;
# otherwise it builds the pages from the notebooks' stored outputs (which nbval holds to
# what the code computes) into _build/site-check-build, in seconds rather than the
# minutes of executing every chapter again. Screenshots of every page at both widths go
# to _build/site-check.
CHROMIUM ?= $(shell command -v chromium || command -v chromium-browser || command -v google-chrome || true)
BOOK_SOURCES := $(NOTEBOOKS) $(wildcard book/*.md book/*.bib _static/* _ext/*.py) _config.yml \
  _toc.yml $(shell find reference_impl -name '*.py') $(wildcard results/*)
STORED := _build/site-check-build/_build/html

$(STORED)/index.html: $(BOOK_SOURCES) | $(STAMP)
	mkdir -p _build
	sed -e 's/^  execute_notebooks: force/  execute_notebooks: "off"/' \
	  -e 's|^    site_fixes: _ext|    site_fixes: ../_ext|' _config.yml > _build/config-stored-outputs.yml
	rm -rf _build/site-check-build
	$(BIN)/jupyter-book build . -W -n --keep-going --config _build/config-stored-outputs.yml \
	  --path-output _build/site-check-build

site-check: $(STAMP)
ifeq ($(CHROMIUM),)
	@echo "site check SKIPPED: no Chromium on this machine (Debian: apt-get update && apt-get install -y chromium)"
else
	@if [ -f _build/html/index.html ] && \
	    [ -z "$$(find $(BOOK_SOURCES) -newer _build/html/index.html -print -quit)" ]; then \
	  echo "site check of the book make book built"; site=_build/html; \
	else \
	  $(MAKE) --no-print-directory $(STORED)/index.html; site=$(STORED); \
	fi; \
	$(BIN)/python tools/site_check.py "$$site" --chromium $(CHROMIUM) --screenshots _build/site-check
endif

test: lint unit nbval site-check

notebooks: $(STAMP)
	for nb in $(NOTEBOOKS); do \
	  $(BIN)/jupyter nbconvert --to notebook --execute --inplace \
	    --ExecutePreprocessor.timeout=1200 "$$nb"; \
	done

# As root (in a container) Jupyter refuses to start without --allow-root; add flags
# with LAB_FLAGS, e.g. LAB_FLAGS="--ip=0.0.0.0 --no-browser" to reach it from the host.
LAB_FLAGS ?=
lab: $(STAMP)
	$(BIN)/jupyter lab $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_FLAGS) notebooks

# BENCH_DEVICE=gpu times on the GPU instead and writes results/bench-*-gpu.csv.
BENCH_DEVICE ?= cpu
bench: $(STAMP)
	for b in benchmarks/bench_*.py; do $(BIN)/python "$$b" --device $(BENCH_DEVICE); done

# Resumable: a second call runs only the trials missing from results/. With RAY_ADDRESS
# set the trials run on that Ray cluster. The grid of tasks, then the map of regimes.
experiments: $(STAMP)
	$(BIN)/python -m reference_impl.experiments run --budget $(BUDGET)
	$(BIN)/python -m reference_impl.experiments run --study map --budget $(BUDGET)

clean:
	rm -rf _build .pytest_cache .hypothesis .benchmarks
