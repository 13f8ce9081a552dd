#!/usr/bin/env bash
# On a lent GPU machine without a package index, sourced from the repository root (`. bench/lease_setup.sh`):
# install the wheels that earlier calls copied anywhere below /tmp/carry, join the GGUF files they carried in
# pieces (/tmp/carry/gguf/<file>.partNN, e.g. gemma-3-270m-q4_k_m.gguf or qwen2.5-coder-1.5b-instruct-q4_k_m.gguf)
# into $QLORA_CACHE/gguf/, where offline_models checks each against its published size and SHA-256 and converts
# it on first use, and set the environment (QLORA_COMMIT: the commit whose tree runs, as the device's .git is
# not this session's). Elsewhere `make setup`.
set -e
if [ ! -f /tmp/site/.installed ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $(find /tmp/carry -name '*.whl')
  touch /tmp/site/.installed
fi
export JUPYTER_PATH=/tmp/site/share/jupyter PYTHONPATH=/tmp/site:$PWD QLORA_CACHE=/tmp/qcache BANKING77_DIR=/tmp/carry/banking77 \
  HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1 QLORA_COMMIT=${QLORA_COMMIT:?the commit that runs}
mkdir -p /tmp/qcache/gguf
for file in $(ls /tmp/carry/gguf/ 2>/dev/null | grep '\.part[0-9]*$' | sed 's/\.part[0-9]*$//' | sort -u); do  # joined whole, then renamed:
  [ -f /tmp/qcache/gguf/$file ] || { cat $(ls /tmp/carry/gguf/$file.part* | sort -V) > /tmp/qcache/gguf/$file.$$ && mv /tmp/qcache/gguf/$file.$$ /tmp/qcache/gguf/$file; }
done
set +e
