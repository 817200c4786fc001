# Everything a newcomer needs: `make demo` (the local demo) and `make test` (all tests).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help venv lint typecheck unit test crds crds-check render demo clean

help: ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP) ## create .venv and install the project with its dev tools

lint: $(STAMP) ## ruff and import-linter (layering)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: $(STAMP) ## mypy --strict on our packages
	$(BIN)/mypy

unit: $(STAMP) ## unit tests only (no cluster)
	$(BIN)/pytest tests/unit -q

test: $(STAMP) ## lint, types and every test
	$(MAKE) lint
	$(MAKE) typecheck
	$(BIN)/pytest -q

crds: $(STAMP) ## regenerate crds/ from the pydantic API models
	$(BIN)/python -m magistral_operator.api.crd

render: $(STAMP) ## render the example endpoint's manifests
	$(BIN)/magistral-operator render -f examples/magistral-small.yaml --config examples/operator-config.yaml

clean: ## remove the virtual environment and caches
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
