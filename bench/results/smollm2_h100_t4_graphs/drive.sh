#!/usr/bin/env bash
# Lease driver, 2026-12-07 (second lease of the day): notebook 02 (LoRA) on real SmolLM2-135M weights (smollm2-t4
# profile: kaggle-t4's settings, a GPU emulating a T4), seeds 1 and 2, CUDA graphs at their default (on) and off, all
# four at once: issue 27's "levers keep test accuracy within 0.3 points over 2 seeds on SmolLM2-135M".
# `bash .carry/drive_s.sh carry DIR` copies one carried folder to /tmp/carry and starts the job once the wheels,
# Banking77 and SmolLM2's three pieces are here; `poll SECONDS` reports; `collect` packs $W.
set -u
W=/tmp/work; SNAP=/tmp/snap; mkdir -p /tmp/carry $W
SMOL=SmolLM2-135M-Instruct.Q4_1.gguf
case $1 in
carry)
  mkdir -p /tmp/carry/incoming/gguf /tmp/carry/gguf && cp -r .carry/$2/. /tmp/carry/incoming/ || exit 1
  [ -d /tmp/carry/incoming/wheels ] && mkdir -p /tmp/carry/wheels && mv /tmp/carry/incoming/wheels/* /tmp/carry/wheels/ && rmdir /tmp/carry/incoming/wheels
  [ -d /tmp/carry/incoming/banking77 ] && mv /tmp/carry/incoming/banking77 /tmp/carry/
  [ $(ls /tmp/carry/incoming/gguf/$SMOL.part* 2>/dev/null | wc -l) = 3 ] && mv /tmp/carry/incoming/gguf/$SMOL.part* /tmp/carry/gguf/
  echo "carried ($(du -sm /tmp/carry | cut -f1) MB so far): $(ls /tmp/carry/gguf | wc -l) whole-file pieces, $(ls /tmp/carry/incoming/gguf | wc -l) waiting"
  if [ ! -d $SNAP ]; then  # the tree every job runs: the first call's, fixed
    mkdir -p $SNAP && cp -r .carry/tree/. $SNAP/ && echo "$QLORA_COMMIT" > $SNAP/COMMIT
  fi
  if [ -d /tmp/carry/banking77 ] && [ $(ls /tmp/carry/gguf/$SMOL.part* 2>/dev/null | wc -l) = 3 ] && [ ! -e $W/main.started ]; then
    touch $W/main.started; echo "== $(date -u +%T) start main" >> $W/phases.log; export QLORA_COMMIT=$(cat $SNAP/COMMIT)
    setsid nohup bash -c "cd $SNAP && . bench/lease_setup.sh > /dev/null
      python3 -c \"from qlora_helpers.offline_models import resolve_model_id as r; print(r('offline:smollm2-135m'))\" || exit 1
      echo \"== \$(date -u +%T) model ready\" >> $W/phases.log
      for nb in 02; do for seed in 1 2; do
        python3 -m qlora_helpers.runners.train_all_gpus --profile smollm2-t4 --notebook \$nb --run-dir $W/nb\${nb}_graphs_seed\$seed --set seed=\$seed > $W/nb\${nb}_graphs_seed\$seed.log 2>&1 &
        python3 -m qlora_helpers.runners.train_all_gpus --profile smollm2-t4 --notebook \$nb --run-dir $W/nb\${nb}_eager_seed\$seed --set seed=\$seed --set cuda_graphs=False > $W/nb\${nb}_eager_seed\$seed.log 2>&1 &
      done; done; wait; echo \"== \$(date -u +%T) exit main\" >> $W/phases.log" > $W/main.log 2>&1 < /dev/null &
  fi ;;
poll)  # until SECONDS pass or every run has written its results: the phases, the GPU, each log's last line
  end=$(( $(date +%s) + $2 ))
  while [ $(date +%s) -lt $end ] && ! grep -q "exit main" $W/phases.log 2>/dev/null; do sleep 5; done
  cat $W/phases.log; nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv,noheader
  for f in $W/*.log; do [ -f $f ] && echo "-- $(basename $f): $(grep -v '^\s*$' $f | tail -c 300 | tr '\r\n' '  ' | tail -c 200)"; done ;;
collect)
  tar --exclude='checkpoint*' --exclude='*.safetensors' --exclude='*.bin' --exclude='*.gguf' -czf $OUT/work.tgz -C $W . && ls -la $OUT ;;
esac
