# The front door: every routine task starts here.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help install test unit integration lint format demo bench fuzz validate build clean

help:
	@echo "make demo      run the resender end to end against emulated AWS and a local Capillary stub"
	@echo "make test      lint, type-check and run the whole test suite"
	@echo "make lint      ruff check, ruff format --check and mypy --strict"
	@echo "make bench     print throughput, request and cold-start figures"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

test: lint
	$(BIN)/python -m pytest

unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit

integration: $(STAMP)
	$(BIN)/python -m pytest tests/integration

demo: $(STAMP)
	$(BIN)/resender demo

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .aws-sam

validate:
	bash tools/validate.sh

build:
	bash tools/build.sh

fuzz: $(STAMP)
	FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-10000} $(BIN)/python -m pytest tests/unit/test_fuzz.py -q -p no:cacheprovider --hypothesis-show-statistics

bench: $(STAMP)
	$(BIN)/python -m bench.run $(BENCH_ARGS)
