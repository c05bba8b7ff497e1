# Two entry points: `make quickstart` (the main job on the embedded digits dataset) and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: quickstart test test-slow bench-flowers clean

$(BIN)/edgecls: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[all,dev]"
	touch $@

quickstart: $(BIN)/edgecls
	$(BIN)/edgecls quickstart --out runs/quickstart

test: $(BIN)/edgecls
	$(BIN)/python -m pytest -q

test-slow: $(BIN)/edgecls
	$(BIN)/python -m pytest -q -m slow

bench-flowers: $(BIN)/edgecls
	$(BIN)/python bench/flowers_matrix.py

clean:
	rm -rf runs .pytest_cache
