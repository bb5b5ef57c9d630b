# lightmesh — every entry point a developer or CI needs. `make demo` and `make test` are the
# README's two set-up commands; both create the virtualenv on first use.

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: demo test lint typecheck unit component integration proto crds check-demo clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

demo: $(STAMP)
	$(BIN)/lightmesh demo

check-demo: $(STAMP)
	$(BIN)/lightmesh demo --check

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

component: $(STAMP)
	$(BIN)/pytest -q tests/component

integration: $(STAMP)
	$(BIN)/pytest -q tests/integration

test: lint typecheck $(STAMP)
	$(BIN)/pytest -q tests

proto: $(STAMP)
	PYTHON=$(BIN)/python scripts/gen_proto.sh

crds: $(STAMP)
	$(BIN)/python scripts/gen_crds.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
