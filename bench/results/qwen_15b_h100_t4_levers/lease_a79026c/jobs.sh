#!/usr/bin/env bash
# Phase B of .carry/drive.sh (2026-12-07 lease), in the snapshot with the lease environment:
# 1. the sweep: 03's QLoRA default against the tutorial recipe on Qwen2.5-Coder-1.5B and 01's full fine-tuning default
#    against its tutorial recipe on Gemma 3 270M, each worker's solo window alone on the GPU;
# 2. then 02 and 03 at kaggle-t4's defaults (qwen-t4 profile), seeds 1 and 2 unless NOTEBOOK_JOBS says otherwise, each
#    started only while the GPU's memory holds every process at its cap.
set -u
W=/tmp/work; TAG=t4_qlora_full
total_gib=$(( $(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1) / 1024 ))
CANDS=${CANDS:-qlora_default,qlora_tutorial,full_default,full_tutorial}
if [ "$CANDS" != none ]; then  # CANDS=none: no sweep (a lease too short for it)
  python3 bench/sweep.py run --model offline:qwen2.5-1.5b --method-model full=offline:gemma-3-270m --candidates $CANDS \
    --tag $TAG --out-dir $W/results --max-seconds ${MAX_SECONDS:-420} --solo-warmup 20 --solo-steps 30 > $W/sweep.log 2>&1 &
  n=$(echo $CANDS | tr , '\n' | wc -l)
  for i in $(seq 900); do [ $(ls /tmp/qlora_sweep/locks_${TAG}_0/solo_done.* 2>/dev/null | wc -l) -ge $n ] && break; sleep 1; done
  echo "== $(date -u +%T) solo windows done ($CANDS; ${total_gib} GiB)" >> $W/phases.log
fi
reserved() {  # GiB the running processes may reach: a default worker or a notebook its cap, a tutorial worker less
  local r=0 c pat
  for c in qlora_default:15 qlora_tutorial:4 full_default:8 full_tutorial:6; do
    pat="worker --candidate ${c%:*} "; pgrep -f -- "$pat" > /dev/null && r=$(( r + ${c#*:} ))
  done
  for p in $PIDS; do kill -0 $p 2>/dev/null && r=$(( r + 15 )); done
  echo $r
}
PIDS=""
for job in ${NOTEBOOK_JOBS:-03:1 02:1 03:2 02:2}; do
  until [ $(( $(reserved) + 15 )) -le $(( total_gib - 3 )) ]; do sleep 5; done
  echo "== $(date -u +%T) start $job (reserved $(reserved) GiB)" >> $W/phases.log
  nb=${job%:*}; seed=${job#*:}
  python3 -m qlora_helpers.runners.train_all_gpus --profile qwen-t4 --notebook $nb --run-dir $W/nb${nb}_seed$seed \
    --set seed=$seed > $W/nb${nb}_seed$seed.log 2>&1 &
  PIDS="$PIDS $!"; sleep 20
done
wait
