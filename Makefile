# dlzoo: `make repro` runs the whole pipeline, `make test` the test suite; both bootstrap
# .venv and the DVC-tracked raw data on a fresh clone, and need nothing activated.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(abspath $(VENV)/bin)
# requirements.lock: the whole resolved environment (every package at its version), installed first; `make lock`
# writes it anew after an edit to pyproject.toml, and tests/test_lock.py keeps the two in step.
LOCK := requirements.lock
# The stamp names the content of pyproject.toml and the lock, not their age: a fresh clone (new mtimes) finds its
# environment up to date, and any edit to either reinstalls.
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml $(LOCK) | md5sum | cut -c1-12)
HOST ?= 127.0.0.1
PORT ?= 5000
WORKERS ?= 4
# make repro PROFILE=smoke: the whole pipeline at smoke size, as a DVC experiment in a temporary copy
# (`dvc exp run --temp`) logging to its own store, so it changes no tracked file and nothing in mlflow.db.
# With a LAUNCHER it runs in the workspace, like every other profile: the cluster's jobs write the workspace's paths.
PROFILE ?=
SMOKE_STORE := sqlite:///$(CURDIR)/mlflow-smoke.db
# make repro TARGETS=evaluate_digits-cnn: only those stages and what they depend on (dvc repro's targets)
TARGETS ?=
# The trainer param (params.yaml, cpu by default) is passed to every train stage on its command line, where
# it would override the full profile's own `trainer: gpu`: so PROFILE=full sets TRAINER=gpu unless given.
TRAINER ?= $(if $(filter full,$(PROFILE)),gpu,)
# make repro LAUNCHER=slurm on a login node: the train stages on the resumable runner run as SLURM jobs
LAUNCHER ?=
# Recipes that exist on one profile only (e.g. LunarLander on full) have their stages in profiles/<profile>/dvc.yaml,
# which plain `dvc repro` never reaches: PROFILE=<profile> adds that file to the default targets.
PIPELINES := $(if $(TARGETS),$(TARGETS),$(if $(wildcard profiles/$(PROFILE)/dvc.yaml),dvc.yaml profiles/$(PROFILE)/dvc.yaml))
# Every stage command calls `python`: with the venv first on PATH it is the venv's, activated or not;
# PYTHONPATH makes it import this tree's src/ whichever checkout the venv was installed from.
RUN := PATH="$(BIN):$$PATH" VIRTUAL_ENV="$(abspath $(VENV))" PYTHONPATH="$(CURDIR)/src"

.PHONY: help venv lock data repro try serve demo stages results test test-e2e test-slow ui server clean
help:
	@echo "make repro              bootstrap .venv + data, then run the DVC pipeline (dvc repro; about 145 min on 2 cores)"
	@echo "make try                train, evaluate, register and serve one digits classifier, and ask it once (minutes)"
	@echo "make repro PROFILE=smoke the same pipeline at smoke size, in a temporary copy with its own store (mlflow-smoke.db)"
	@echo "make repro TARGETS=...  only those stages and their upstream, e.g. TARGETS=evaluate_digits-cnn"
	@echo "make repro PROFILE=full  the GPU recipes (TRAINER=gpu unless TRAINER=ddp|fsdp is given), with profiles/full/dvc.yaml"
	@echo "make repro LAUNCHER=slurm on a login node: train stages on the resumable runner run as SLURM jobs (docs/cluster.md)"
	@echo "make test               bootstrap, then run the default test suite (pytest: not slow, not e2e)"
	@echo "make test-e2e           the whole pipeline as typed: make repro PROFILE=smoke in a fresh copy, and the served answer kinds (about 45 min)"
	@echo "make test-slow          every test, slow and e2e included"
	@echo "make lock PYTHON=/usr/bin/python3.11  requirements.lock anew from pyproject.toml, with the oldest 3.11 to support"
	@echo "make stages             regenerate dvc.yaml from conf/experiment/ (python -m dlzoo.stages)"
	@echo "make results            regenerate the results tables (README.md, docs/tasks/) from metrics/"
	@echo "make serve TASK=digits  serve models:/<task>@champion on http://$(HOST):$(SERVE_PORT) (or MODEL=models:/<name>/<version>)"
	@echo "make demo               the playground: a page per task over the champions on http://$(HOST):$(DEMO_PORT) (STORE=...)"
	@echo "make ui                 MLflow UI for mlflow.db on http://$(HOST):$(PORT) (STORE=mlflow-smoke.db for the smoke run's)"
	@echo "make server HOST=0.0.0.0 a tracking server for cluster nodes (MLFLOW_TRACKING_URI=http://<this host>:$(PORT))"

venv: $(STAMP)
$(STAMP):
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; dlzoo needs Python 3.11 (set PYTHON=...)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

# The lock from a fresh environment resolved from pyproject.toml alone (its pins, and what pip picks for the rest).
LOCK_VENV := $(abspath .lock-venv)
lock:
	rm -rf $(LOCK_VENV) && $(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LOCK_VENV)/bin/python -m pip install --quiet -e '.[dev]'
	( echo "# generated by make lock from pyproject.toml with $$($(PYTHON) -V) on Linux x86_64 (the oldest 3.11 in use, so"; \
	  echo "# the pins install on any later 3.11): the environment make venv installs"; \
	  $(LOCK_VENV)/bin/python -m pip freeze --exclude-editable ) > $(LOCK)
	rm -rf $(LOCK_VENV)

# Restore data/ from the project's DVC remote (a no-op when it is already there).
data: $(STAMP)
	$(RUN) dvc pull --quiet data.dvc

repro: data
ifeq ($(PROFILE)$(LAUNCHER),)
	$(RUN) dvc repro $(TARGETS)
else ifeq ($(PROFILE)$(LAUNCHER),smoke)
	$(RUN) MLFLOW_TRACKING_URI=$(SMOKE_STORE) dvc exp run --temp $(strip --set-param profile=smoke $(if $(TRAINER),--set-param trainer=$(TRAINER)) $(PIPELINES))
	@echo "smoke run done: its results are the DVC experiment above (dvc exp show), its runs in mlflow-smoke.db (make ui STORE=mlflow-smoke.db)"
else
	$(RUN) dvc exp run $(strip $(if $(PROFILE),--set-param profile=$(PROFILE)) $(if $(TRAINER),--set-param trainer=$(TRAINER)) $(if $(LAUNCHER),--set-param launcher=$(LAUNCHER)) $(PIPELINES))
endif

stages: $(STAMP)
	$(RUN) python -m dlzoo.stages

results: $(STAMP)
	$(RUN) python -m dlzoo.results

# --durations: the slowest tests in every log (CI's included), so a slow test or a slow machine shows
test: data
	$(RUN) python -m pytest --durations=25

test-e2e: data
	$(RUN) python -m pytest -m e2e --durations=25

test-slow: data
	$(RUN) python -m pytest -m "slow or e2e or not slow"

# A first result in minutes, in outputs/try/ with its own store: nothing tracked and nothing in mlflow.db changes.
try: data
	$(RUN) python -m dlzoo.quickstart

# `mlflow models serve` execs uvicorn by name: RUN puts the venv's bin first on PATH, so nothing needs activating.
SERVE_PORT ?= 5001
MODEL ?=
TASK ?=
serve: $(STAMP)
	$(RUN) python -m dlzoo.serve $(if $(TASK),--task $(TASK)) $(if $(MODEL),--model $(MODEL)) --host $(HOST) --port $(SERVE_PORT)

STORE ?= mlflow.db
# The playground (Gradio) over STORE's champions; it only reads the store. Its extra is installed on first use, so
# the pipeline's own environment does not grow (the dev extra has it already, for the browser test).
DEMO_PORT ?= 7860
demo: $(STAMP)
	@$(BIN)/python -c "import gradio" 2>/dev/null || $(BIN)/python -m pip install --quiet -e '.[demo]'
	$(RUN) python -m dlzoo.demo --store sqlite:///$(abspath $(STORE)) --host $(HOST) --port $(DEMO_PORT)

ui: $(STAMP)
	$(RUN) mlflow ui --backend-store-uri sqlite:///$(STORE) --host $(HOST) --port $(PORT)

# The tracking server cluster nodes log to: the same mlflow.db, artifacts uploaded through the server into
# mlartifacts/ (nodes need no shared disk). On the nodes: MLFLOW_TRACKING_URI=http://<host>:$(PORT) and
# tracking.artifact_root=null, so new experiments take the server's artifact store.
SERVER_STORE ?= sqlite:///$(CURDIR)/mlflow.db
SERVER_ARTIFACTS ?= $(CURDIR)/mlartifacts
# Off the loopback (or with AUTH=1) it is MLflow's basic-auth app: the admin password from MLFLOW_AUTH_ADMIN_PASSWORD
# or .mlflow-credentials (ignored by git); nodes log in with MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD.
AUTH ?=
server: $(STAMP)
	$(RUN) python -m dlzoo.tracking.server --store $(SERVER_STORE) --artifacts $(SERVER_ARTIFACTS) \
		--host $(HOST) --port $(PORT) --workers $(WORKERS) $(if $(AUTH),--auth)

clean:
	rm -rf outputs multirun .pytest_cache
