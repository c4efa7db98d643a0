# The front door: every routine task starts here.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help install lock test test-runtime unit integration lint format demo bench fuzz validate build clean

help:  ## list every target
	@awk -F':.*## ' '/^[a-z][a-z-]*:.*## / {printf "make %-14s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# Exactly the locked versions (hashes checked), then the project itself without resolving anything again.
$(STAMP): pyproject.toml requirements/dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements/dev.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install the package with its development tools
lock:  ## refresh uv.lock (UPGRADE=1 to take newer releases) and the requirement files exported from it
	bash tools/lock.sh


lint: $(STAMP)  ## ruff check, ruff format --check and mypy --strict
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

format: $(STAMP)  ## format the code and apply ruff's safe fixes
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

test: lint  ## lint, type-check and run the whole test suite
	$(BIN)/python -m pytest

# The Lambda runtime's Python, read from template.yaml, in a virtual environment of its own.
RUNTIME_PYTHON_VERSION := $(shell sed -n 's/^ *Runtime: python\(3\.[0-9]*\).*/\1/p' template.yaml | head -n 1)

test-runtime:  ## the same lint and suite on the Lambda runtime's Python (from template.yaml)
	$(MAKE) test PYTHON="$$(bash tools/find-python.sh $(RUNTIME_PYTHON_VERSION))" VENV=.venv-py$(RUNTIME_PYTHON_VERSION)

unit: $(STAMP)  ## run the unit tests only
	$(BIN)/python -m pytest -m unit

integration: $(STAMP)  ## run the integration tests only (moto server and the Capillary stub)
	$(BIN)/python -m pytest -m integration

demo: $(STAMP)  ## run the resender end to end against emulated AWS and a local Capillary stub
	$(BIN)/resender demo

clean:  ## remove the virtual environment, caches and SAM build output
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .aws-sam

validate:  ## sam validate --lint and checkov on template.yaml, each in its own virtual environment
	bash tools/validate.sh

build:  ## sam build: the Lambda artefact under .aws-sam/
	bash tools/build.sh

fuzz: $(STAMP)  ## property-based fuzzing with FUZZ_EXAMPLES examples per property (default 10000)
	FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-10000} $(BIN)/python -m pytest tests/unit/test_fuzz.py tests/unit/test_classify.py -q -p no:cacheprovider --hypothesis-show-statistics

bench: $(STAMP)  ## print throughput, request, cold-start and storm figures (BENCH_ARGS=--storm, --power-tuning or --artefact: that alone)
	$(BIN)/python -m bench.run $(BENCH_ARGS)
