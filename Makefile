# VV Edge. `make demo` runs the pipeline on a sample; `make test` runs the test suite.
# Both install what is missing first (system packages as root, a .venv with every extra).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo lint bench wheel system-deps install clean asyncapi

system-deps:
	@bash scripts/system-deps.sh

$(STAMP): pyproject.toml ansible/requirements-dev.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[yolo,onnx,openvino,postgres,dev]'
	$(BIN)/python -m pip install -q -r ansible/requirements-dev.txt
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

# the AsyncAPI 3 document of the bus, from schemas/ and the topic table (checked in; a test catches drift)
asyncapi: install
	$(BIN)/python scripts/asyncapi.py docs/asyncapi.yaml

# the wheel ansible/ installs on the devices (vv_install_wheel=$PWD/dist/vv_edge-<version>-py3-none-any.whl)
wheel: install
	$(BIN)/python -m pip wheel -q --no-deps --no-build-isolation -w dist .

clean:
	rm -rf $(VENV) var dist .pytest_cache .mypy_cache .ruff_cache
