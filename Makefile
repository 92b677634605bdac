# dlzoo: `make repro` runs the whole pipeline, `make test` the test suite; both bootstrap
# .venv and the DVC-tracked raw data on a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
HOST ?= 127.0.0.1
PORT ?= 5000

.PHONY: help venv data repro test test-slow ui clean
help:
	@echo "make repro       bootstrap .venv + data, then run the DVC pipeline (dvc repro)"
	@echo "make test        bootstrap, then run the default test suite (pytest, not slow)"
	@echo "make test-slow   the slow tests too (long end-to-end runs)"
	@echo "make ui          MLflow UI for mlflow.db on http://$(HOST):$(PORT)"

venv: $(STAMP)
$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; dlzoo needs Python 3.11 (set PYTHON=...)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

# Restore data/ from the project's DVC remote (a no-op when it is already there).
data: $(STAMP)
	$(BIN)/dvc pull --quiet data.dvc

repro: data
	$(BIN)/dvc repro

test: data
	$(BIN)/python -m pytest

test-slow: data
	$(BIN)/python -m pytest -m "slow or not slow"

ui: $(STAMP)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --host $(HOST) --port $(PORT)

clean:
	rm -rf outputs multirun .pytest_cache
