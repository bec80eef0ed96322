# frazil: set-up and test entry points. Everything installs from nothing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-test

.PHONY: demo test lint bench clean

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

test: $(STAMP)
	$(BIN)/ruff format --check engine format zarr_adapter tools tests dev
	$(BIN)/ruff check engine format zarr_adapter tools tests dev
	$(BIN)/mypy engine format zarr_adapter tools
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff format --check engine format zarr_adapter tools tests dev
	$(BIN)/ruff check engine format zarr_adapter tools tests dev
	$(BIN)/mypy engine format zarr_adapter tools

bench: $(STAMP)
	$(BIN)/python -m pip install -q icechunk==1.1.21
	$(BIN)/python ../shared/bench/bench.py --backend frazil-local,icechunk-local,local --workload W1,W2 --repeat 3

clean:
	rm -rf $(VENV) build *.egg-info
