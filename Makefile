# Set-up is part of each target: `make dry-run` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: dry-run test setup
dry-run: setup
	$(BIN)/robot-sql dry-run

test: setup
	$(BIN)/python -m pytest -ra

setup: $(VENV)/.installed

# torch is installed first at a known release (a local CPU wheel on the project's CI
# machines, the CUDA build from PyPI elsewhere); pyproject.toml only bounds it.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[test,ros]"
	touch $@
