# Two commands do all set-up on a fresh machine:
#   make demo   runs the ledger demo (on OUTBOX_DSN, else 127.0.0.1:5432, else an embedded PostgreSQL)
#   make test   runs the quality gates and the whole test suite
# Both create and use a local virtual environment in .venv.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint unit integration chaos packaging bench-enqueue bench-relay clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "outbox needs Python 3.11 or newer: run make PYTHON=python3.11 ...")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@# pip compiles what it installs, but not an editable install's own sources: compile them
	@# now, or with PYTHONDONTWRITEBYTECODE set every process would compile them at its start.
	$(BIN)/python -m compileall -q outbox relay
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/outbox demo

lint: $(STAMP)
	$(BIN)/ruff check outbox relay migrations examples bench tests
	$(BIN)/ruff format --check outbox relay migrations examples bench tests
	$(BIN)/mypy --strict outbox relay

unit: $(STAMP)
	$(BIN)/pytest tests/unit -q

integration: $(STAMP)
	$(BIN)/pytest tests/integration -q -n 2

chaos: $(STAMP)
	$(BIN)/pytest tests/chaos -q

packaging: $(STAMP)
	$(BIN)/pytest tests/packaging -q

test: lint
	$(BIN)/pytest tests -n 2 -q

bench-enqueue: $(STAMP)
	$(BIN)/python -m bench.enqueue

bench-relay: $(STAMP)
	$(BIN)/python -m bench.relay

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
