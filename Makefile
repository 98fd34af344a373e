# Two commands on a fresh machine: `make run` and `make test`. Each creates .venv when it is
# missing and installs the project into it before doing its job.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run test check lint typecheck layers bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)

run: setup
	$(BIN)/legato run

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: setup
	$(BIN)/mypy

layers: setup
	$(BIN)/lint-imports

check: lint typecheck layers

test: check
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m benchmarks.bus
	$(BIN)/python -m benchmarks.limiter
	$(BIN)/python -m benchmarks.clock
	$(BIN)/python -m benchmarks.queue --backend sqlite --tasks 10000 --workers 1
	$(BIN)/python -m benchmarks.execution
	$(BIN)/python -m benchmarks.workflows --backend sqlite --workflows 2000
	$(BIN)/python -m benchmarks.backtest

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
