#!/usr/bin/env bash
# On a lent GPU machine without a package index, sourced from the repository root (`. bench/lease_setup.sh`): install
# the wheels that earlier calls copied anywhere below /tmp/carry (Unsloth's, /tmp/carry/wheels_unsloth, apart into
# /tmp/site_unsloth with the carried peft and bitsandbytes: bench/unsloth_row.py), join GGUF pieces /tmp/carry/gguf/<file>.partNN
# into $QLORA_CACHE/gguf/ (offline_models checks size and SHA-256, converts on first use), set the environment. Else `make setup`.
set -e
[ -f /tmp/site/.installed ] || { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  $(find /tmp/carry -name '*.whl' -not -path '*/wheels_unsloth/*') && touch /tmp/site/.installed; }
u=$(ls /tmp/carry/wheels_unsloth/*.whl 2>/dev/null | wc -l)  # installed again whenever more of Unsloth's wheels came
[ $u = 0 ] || [ "$(cat /tmp/site_unsloth/.installed 2>/dev/null)" = $u ] || { python3 -m pip install -q --no-index --no-deps --no-compile \
  --no-cache-dir --upgrade --target /tmp/site_unsloth /tmp/carry/wheels_unsloth/*.whl $(find /tmp/carry -name 'peft-*.whl' -o -name \
  'bitsandbytes-*.whl') && echo $u > /tmp/site_unsloth/.installed; } || echo "Unsloth's wheels did not install" >&2
export JUPYTER_PATH=/tmp/site/share/jupyter PYTHONPATH=/tmp/site:$PWD QLORA_CACHE=/tmp/qcache BANKING77_DIR=/tmp/carry/banking77 \
  HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1 QLORA_COMMIT=${QLORA_COMMIT:?the commit that runs}
mkdir -p /tmp/qcache/gguf
for file in $(ls /tmp/carry/gguf/ 2>/dev/null | grep '\.part[0-9]*$' | sed 's/\.part[0-9]*$//' | sort -u); do  # joined whole, then renamed:
  [ -f /tmp/qcache/gguf/$file ] || { cat $(ls /tmp/carry/gguf/$file.part* | sort -V) > /tmp/qcache/gguf/$file.$$ && mv /tmp/qcache/gguf/$file.$$ /tmp/qcache/gguf/$file; }
done
set +e
