# Everything a newcomer needs: `make demo` (the local demo) and `make test` (all tests).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help venv lint typecheck unit cluster-test vllm-env vllm-test test crds render binaries cluster-up cluster-down demo demo-down image bench bench-scale clean

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

unit: $(STAMP) ## unit tests only (no cluster, no real engine)
	$(BIN)/pytest -q -m "not cluster and not vllm"

cluster-test: $(STAMP) binaries ## tests against the real local control plane only
	$(BIN)/pytest -q -m cluster

vllm-env: $(STAMP) ## install or reuse the real vLLM engine's CPU venv (cached outside the repo)
	$(BIN)/python -m e2e.real_engine.env

vllm-test: vllm-env ## tests against the real vLLM engine only (marker vllm)
	$(BIN)/pytest -q -m vllm

test: $(STAMP) ## lint, types and every test (builds the cluster binaries and the engine venv on a cold cache)
	$(MAKE) lint
	$(MAKE) typecheck
	$(MAKE) binaries
	$(MAKE) vllm-env
	$(BIN)/pytest -q

binaries: $(STAMP) ## build or reuse kube-apiserver, etcd, kwok, helm ... (cached outside the repo)
	$(BIN)/python -m e2e.cluster.binaries

cluster-up: binaries ## start a local control plane with simulated GPU pools, in the background
	$(BIN)/python -m e2e.cluster up

cluster-down: ## stop it
	$(BIN)/python -m e2e.cluster down

demo: binaries ## the local demo: cluster, chart, operator, an endpoint (stop: make demo-down)
	$(BIN)/python -m e2e.demo up

demo-down: ## stop the demo
	$(BIN)/python -m e2e.demo down

crds: $(STAMP) ## regenerate crds/ from the pydantic API models
	$(BIN)/python -m magistral_operator.api.crd

render: $(STAMP) ## render the example endpoint's manifests
	$(BIN)/magistral-operator render -f examples/magistral-small.yaml --config examples/operator-config.yaml

IMAGE ?= magistral-runtime:0.1.0
OPERATOR_IMAGE ?= ghcr.io/magistral-operator/operator:0.1.0
ROUTER_IMAGE ?= ghcr.io/magistral-operator/router:0.1.0-vllm-router0.1.17
image: ## build the serving, router and operator images (needs a Docker engine)
	docker build -f runtime/Dockerfile -t $(IMAGE) .
	docker build -f router/Dockerfile -t $(ROUTER_IMAGE) .
	docker build -f operator/Dockerfile -t $(OPERATOR_IMAGE) .

bench: $(STAMP) ## benchmarks (printed; results recorded in docs/)
	$(BIN)/python bench/middleware_overhead.py
	$(BIN)/python bench/front_overhead.py
	$(BIN)/python bench/autoscale_replay.py ../shared/data/traces/azure-llm-2023-code.csv

bench-scale: $(STAMP) binaries ## scale bench: 10/100/500 endpoints on 1,000 kwok GPU nodes (docs/scale.md; ~30 min)
	$(BIN)/python bench/scale.py

clean: ## remove the virtual environment and caches
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
