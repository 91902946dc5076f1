# Set-up is part of each target: `make dry-run` and `make test` work on a fresh machine.
# Options of the dry run: make dry-run ARGS="--actors 2" (or ARGS="--ros" after `make ros_ws`).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: dry-run test setup ros_ws
dry-run: setup
	$(BIN)/robot-sql dry-run $(ARGS)

test: setup ros_ws
	$(BIN)/python -m pytest -ra

setup: $(VENV)/.installed

# torch is installed first at a known release (a local CPU wheel on the project's CI
# machines, the CUDA build from PyPI elsewhere); pyproject.toml only bounds it.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[test,ros,bench]"
	touch $@

# The colcon workspace (ROS 2 messages + the actor node package). A failed build does not stop
# `make test`: the ROS tests then skip locally and fail in CI (ROBOT_SQL_REQUIRE_ALL=1).
ros_ws: ros_ws/install/.built
ros_ws/install/.built: $(VENV)/.installed scripts/build_ros_ws.sh $(shell find ros_ws/src -type f -not -name '*.pyc')
	VENV=$(VENV) scripts/build_ros_ws.sh && touch $@ || echo "ros_ws was not built: the ROS 2 tests will be skipped" >&2
