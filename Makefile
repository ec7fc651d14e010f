PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch, installed before the project so that no dependency pulls a CUDA build.
TORCH_PIN ?= torch==2.13.0

.PHONY: setup test test-slow repro clean-venv

setup: $(BIN)/dvc

$(BIN)/dvc: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_PIN)"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

# The fast set: everything but the tests marked slow (pipelines end to end, servers, benchmarks).
test: setup
	$(BIN)/pytest -m "not slow"

test-slow: setup
	$(BIN)/pytest -m slow

repro: setup
	$(BIN)/dvc repro

clean-venv:
	rm -rf $(VENV)
