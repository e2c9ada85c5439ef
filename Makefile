# VV Edge. `make demo` runs the pipeline on a sample; `make test` runs the test suite.
# Both install what is missing first (system packages as root, a .venv with every extra).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo lint bench system-deps install clean

system-deps:
	@bash scripts/system-deps.sh

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[yolo,onnx,openvino,dev]'
	@touch $(STAMP)

install: system-deps $(STAMP)

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

demo: install
	$(BIN)/vv demo

bench: install
	$(BIN)/python bench/bus.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
