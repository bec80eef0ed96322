# frazil: set-up and test entry points. Everything installs from nothing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-test
SOURCES := engine format zarr_adapter tools tests dev bench
TYPES := build/typecheck
# the Azure Blob Storage emulator the tests run against (npm; Node 20 or later)
AZURITE_VERSION := 3.37.0
AZURITE := .azurite/node_modules/.bin/azurite-blob

.PHONY: demo test test-fast lint typecheck bench clean azurite

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[demo]'
	touch $@

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test,demo]'
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/python tools/demo.py

# everything: lint, types, and the whole suite (S3 tests on a SeaweedFS server, Azure tests
# on Azurite: the tests start both on free 127.0.0.1 ports)
test: lint $(AZURITE)
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

# Azurite, pinned, into a project-local folder (git ignores it)
azurite: $(AZURITE)

$(AZURITE):
	npm install --prefix .azurite --no-audit --no-fund --no-save --silent azurite@$(AZURITE_VERSION)
	touch $@

# a couple of minutes: no S3 server, no soaks, kills, state machines or dask cluster
test-fast: lint
	FRAZIL_FAST=1 $(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

lint: $(STAMP) typecheck
	$(BIN)/ruff format --check $(SOURCES)
	$(BIN)/ruff check $(SOURCES)

# mypy over the sources laid out as installed, so imports between the layers are checked
typecheck: $(STAMP)
	$(BIN)/python dev/typecheck_tree.py $(TYPES)
	cd $(TYPES) && $(CURDIR)/$(BIN)/mypy --config-file $(CURDIR)/pyproject.toml frazil
	MYPYPATH=$(TYPES) $(BIN)/mypy --config-file pyproject.toml bench dev

# side by side with Icechunk 1.1.21 (installed here if the registry has it) and zarr's stores
bench: $(STAMP)
	-$(BIN)/python -m pip install -q icechunk==1.1.21
	$(BIN)/python bench/sidebyside.py --repeat 3

clean:
	rm -rf $(VENV) build *.egg-info .azurite
