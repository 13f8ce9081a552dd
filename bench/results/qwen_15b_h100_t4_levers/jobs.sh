#!/usr/bin/env bash
# Phase B of .carry/drive.sh, in the snapshot with the lease environment: the sweep first (each worker's solo window
# alone on the GPU), then 02 and 03 at kaggle-t4's defaults on real Qwen2.5-Coder-1.5B (seeds 42 and 1), each started
# only while the GPU's memory holds every running process at its T4 cap (14.5 GiB; 15 reserved each).
set -u
W=/tmp/work; TAG=qwen15_t4_levers
total_gib=$(( $(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1) / 1024 ))
CANDS=lora_default_b32x2,lora_tutorial,qlora_default,qlora_tutorial
[ $total_gib -gt 120 ] && CANDS=$CANDS,qlora_default_fused  # room for it beside the notebooks on an H200
python3 bench/sweep.py run --model offline:qwen2.5-1.5b --candidates $CANDS --tag $TAG --out-dir $W/results \
  --max-seconds ${MAX_SECONDS:-420} --solo-warmup 20 --solo-steps 30 > $W/sweep.log 2>&1 &
n=$(echo $CANDS | tr , '\n' | wc -l)
for i in $(seq 900); do [ $(ls /tmp/qlora_sweep/locks_${TAG}_0/solo_done.* 2>/dev/null | wc -l) -ge $n ] && break; sleep 1; done
echo "== $(date -u +%T) solo windows done ($CANDS; ${total_gib} GiB)" >> $W/phases.log
reserved() {  # GiB the running processes may reach: a default worker or a notebook its cap, a tutorial worker less
  local r=0 c pat
  for c in lora_default_b32x2:15 qlora_default:15 qlora_default_fused:15 lora_tutorial:7 qlora_tutorial:4; do
    pat="worker --candidate ${c%:*} "; pgrep -f -- "$pat" > /dev/null && r=$(( r + ${c#*:} ))
  done
  for p in $PIDS; do kill -0 $p 2>/dev/null && r=$(( r + 15 )); done
  echo $r
}
PIDS=""
JOBS="02:42 03:42 02:1 03:1"; [ $total_gib -gt 120 ] && JOBS="$JOBS 02:2 03:2"  # a third seed where memory allows
for job in ${NOTEBOOK_JOBS:-$JOBS}; do
  nb=${job%:*}; seed=${job#*:}
  until [ $(( $(reserved) + 15 )) -le $(( total_gib - 3 )) ]; do sleep 5; done
  echo "== $(date -u +%T) start nb${nb}_seed$seed (reserved $(reserved) GiB)" >> $W/phases.log
  python3 -m qlora_helpers.runners.train_all_gpus --profile qwen-t4 --notebook $nb --run-dir $W/nb${nb}_seed$seed \
    --set seed=$seed > $W/nb${nb}_seed$seed.log 2>&1 &
  PIDS="$PIDS $!"; sleep 20
done
wait
