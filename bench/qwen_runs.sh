#!/usr/bin/env bash
# What ran on a lent GPU for the real-Qwen defaults (bench/results/qwen_h100_t4.md): notebooks 02 and 03
# through runners/train_all_gpus on real Qwen2.5-Coder-0.5B-Instruct weights, the qwen-t4 profile (T4
# emulated: fp16, 14.5 GiB), at the shipped defaults under seeds 42, 1 and 2, and at the former rate 2e-3
# (02, divergence recovery on). All seven share one GPU, started under setsid so polling calls
# (bench/lease_poll.sh WORK done) can pack what is finished. Earlier calls copied to /tmp/carry the
# wheels of constraints.txt's GPU set, Banking77 and the GGUF's pieces (bench/README.md).
# Usage: bash bench/qwen_runs.sh WORK [MODEL]
set -u
WORK=${1:?a work folder} MODEL=${2:-offline:qwen2.5-0.5b}
mkdir -p "$WORK"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/carry/wheels/*.whl
export PYTHONPATH=/tmp/site:$PWD QLORA_CACHE=/tmp/qcache BANKING77_DIR=/tmp/carry/banking77 HF_HUB_OFFLINE=1 \
  TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
mkdir -p /tmp/qcache/gguf
cat $(ls /tmp/carry/gguf/q05.part* | sort) > /tmp/qcache/gguf/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
python3 -c "from qlora_helpers.offline_models import resolve_model_id as r; print(r('$MODEL'))" > "$WORK/convert.log" 2>&1
python3 -c "import transformers, peft, bitsandbytes, datasets, pyarrow, torch, kernels; print({m.__name__: m.__version__ for m in (transformers, peft, bitsandbytes, datasets, pyarrow, torch, kernels)})" >> "$WORK/convert.log" 2>&1
run() {  # NAME NOTEBOOK [--set KEY=VALUE ...]
  python3 -m qlora_helpers.runners.train_all_gpus --profile qwen-t4 --notebook "$2" --run-dir "$WORK/$1" \
    --set "model_id=$MODEL" "${@:3}" > "$WORK/$1.log" 2>&1
  echo "exit $?" >> "$WORK/$1.log"
}
setsid bash -c "$(declare -f run); WORK=$WORK MODEL=$MODEL
  for seed in 42 1 2; do run nb02_seed\$seed 02 --set seed=\$seed & run nb03_seed\$seed 03 --set seed=\$seed & done
  run nb02_lr2e-3 02 --set learning_rate=0.002 &
  wait; echo done >> $WORK/phases.log" > /dev/null 2>&1 < /dev/null &
sleep 60  # a run that fails at start-up shows by now: say so at once
tail -n 3 "$WORK/convert.log"; grep -l "^exit [1-9]" "$WORK"/nb*.log && tail -n 20 "$WORK"/nb02_seed42.log
