# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint typecheck unit bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev,ccxt]'
	touch $(STAMP)

install: $(STAMP)

# the orchestrator in monolithic mode on the embedded defaults (sim market, SQLite under
# data/, in-process cache): one run at once, then the URLs to try; Ctrl-C stops it
run: $(STAMP)
	$(BIN)/conclave demo

lint: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile

test: lint typecheck unit

bench: $(STAMP)
	$(BIN)/python benchmarks/data_layer.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

.PHONY: agents-start agents-stop agents-health

agents-start: $(STAMP)
	$(BIN)/conclave agents start

agents-stop: $(STAMP)
	$(BIN)/conclave agents stop

agents-health: $(STAMP)
	$(BIN)/conclave agents health
