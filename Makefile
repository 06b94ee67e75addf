# Two commands do all the set-up on a fresh clone: `make demo` and `make test`.
# Both create the virtual environment at .venv when it is missing (or pyproject.toml changed).
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTHON ?= python3
export PATH := $(CURDIR)/$(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1
export PREFECT_HOME ?= $(CURDIR)/.prefect
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 90
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION := false
export MLFLOW_DISABLE_TELEMETRY := true
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR := false

.PHONY: venv demo demo-upsampling test lint bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m flows.pipeline

# The demo plus the upsampling study (ADM-U, Table 5 miniature): three more trainings, longer than `demo`.
demo-upsampling: $(STAMP)
	$(BIN)/python -m flows.pipeline --upsampling

# Two pytest-xdist workers, a test module per worker at a time (module fixtures are built once): most of the
# suite's time is subprocesses starting (gdm stages, dvc, prefect, torchrun), which one process leaves serial.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadscope

lint: $(STAMP)
	$(BIN)/ruff check gdm flows tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_unet.py

clean:
	rm -rf runs reports mlflow.db mlruns .prefect data/prepared data/cache
