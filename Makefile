PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch, installed before the project so that no dependency pulls a CUDA build.
TORCH_PIN ?= torch==2.13.0

.PHONY: setup lint test test-slow repro clean-venv

# The page `dvc plots show` fills (.dvc/config names it; ignored by git): vega inline, so plots render offline.
PLOTS_PAGE := .dvc/plots-page.html

setup: $(BIN)/dvc $(PLOTS_PAGE)

$(BIN)/dvc: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_PIN)"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

$(PLOTS_PAGE): $(BIN)/dvc
	$(BIN)/python -m detox.common.plots_page

# Style, kept by ruff (its settings are in pyproject.toml): lint, and the formatting ruff format would write.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The fast set: everything but the tests marked slow (pipelines end to end, servers, benchmarks).
test: setup
	$(BIN)/pytest -m "not slow"

test-slow: setup
	$(BIN)/pytest -m slow

repro: setup
	$(BIN)/dvc repro

clean-venv:
	rm -rf $(VENV)
