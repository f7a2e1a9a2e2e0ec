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

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $@

setup: $(STAMP)

# The P2+P7+P8 control on ETTm1 when the data directory has it, else on the synthetic series.
demo: $(STAMP)
	@if [ -f "$(HMEM_DATA_DIR)/ETTm1.csv.gz" ] || [ -f "$(HMEM_DATA_DIR)/ETTm1.csv" ]; then \
		$(BIN)/hmem run search_spaces/control.yaml --variant p2p7p8 --dataset ETTm1; \
	else \
		echo "no ETTm1 in $(HMEM_DATA_DIR): running on the synthetic series"; \
		$(BIN)/hmem run search_spaces/control.yaml --variant p2p7p8 --dataset synthetic; \
	fi

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/online_step.py

clean:
	rm -rf $(VENV) results .pytest_cache
