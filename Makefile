# Two entry points, each doing all of its set-up on a fresh machine:
#   make demo   the main job (see README)
#   make test   the test suite (what CI runs)
VENV     ?= .venv
PYTHON   ?= python3
DATA_DIR ?= $(abspath ../shared/data)
export HMEM_DATA_DIR ?= $(DATA_DIR)

BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test bench clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt -r requirements-dev.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $@

setup: $(STAMP)

# A real ablation search on an embedded local Ray (127.0.0.1): the quickstart space, 8 trials.
demo: $(STAMP)
	$(BIN)/hmem tune launch search_spaces/quickstart.yaml --name quickstart-$$(date +%Y%m%d-%H%M%S)

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/online_step.py

clean:
	rm -rf $(VENV) results .pytest_cache
