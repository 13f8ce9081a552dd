#!/usr/bin/env bash
# What ran on the lent two-GPU machine (nvidia-h200-x2) after `. bench/lease_setup.sh`, each GPU
# emulating a T4 (profile smollm2-t4: QLORA_EMULATE_GPU=t4), in three phases; logs in $WORK.
#   1. the reference run: 01 then 02 on GPU 0 while 03 runs on GPU 1, then 04 (one GPU per notebook,
#      as on a single T4); this folder becomes reference/smollm2-t4/ in the repository;
#   2. notebook 03 on both GPUs at once through the same runner (the training cell's two-GPU path,
#      notebook/all_gpus.py), to set against 03 of the reference run;
#   3. notebook 01 on Gemma 3 270M (the series' default for 01) under the T4 profile: fp16 autocast
#      over fp32 weights, the check that its loss stays finite and its accuracy sane.
# Usage: bash bench/lease_jobs.sh WORK_FOLDER
set -u
WORK=${1:?a work folder}
mkdir -p "$WORK"
RUN="python3 -m qlora_helpers.runners.run --profile smollm2-t4"
phase() { echo "== $(date -u +%H:%M:%S) $*" >> "$WORK/phases.log"; }
phase reference
(CUDA_VISIBLE_DEVICES=0 $RUN --run-dir "$WORK/smollm2-t4" --notebooks 01 02 > "$WORK/reference_gpu0.log" 2>&1; echo "exit $?" >> "$WORK/reference_gpu0.log") &
(CUDA_VISIBLE_DEVICES=1 $RUN --run-dir "$WORK/smollm2-t4" --notebooks 03 > "$WORK/reference_gpu1.log" 2>&1; echo "exit $?" >> "$WORK/reference_gpu1.log") &
wait
$RUN --run-dir "$WORK/smollm2-t4" --notebooks 04 > "$WORK/reference_04.log" 2>&1; echo "exit $?" >> "$WORK/reference_04.log"
phase two-gpu notebook
$RUN --run-dir "$WORK/two_gpus" --notebooks 03 > "$WORK/two_gpus.log" 2>&1; echo "exit $?" >> "$WORK/two_gpus.log"
phase gemma
CUDA_VISIBLE_DEVICES=0 $RUN --run-dir "$WORK/gemma" --notebooks 01 --set model_id=offline:gemma-3-270m \
  > "$WORK/gemma.log" 2>&1; echo "exit $?" >> "$WORK/gemma.log"
phase done
