#!/usr/bin/env bash
# Lease driver, 2026-12-07 (second session): `bash .carry/drive.sh carry cNN` copies one carried folder to /tmp/carry and
# starts what its arrival makes possible (setsid, so it outlives the call); `poll SECONDS` reports; `collect` packs $W.
# Chain (one background job, "main", started once the wheels, Unsloth's and Banking77 are here), alone on the GPU:
# flat_optimizer's tests; the 7B QLoRA shape over an epoch (bench/speed.py: the default with the flat 8-bit AdamW, the
# same with bitsandbytes' per-tensor loop, with fused AdamW); Unsloth's row on the same checkpoint; then, once
# Qwen2.5-Coder-1.5B is whole, .carry/jobs.sh (the sweep: QLoRA's default against the tutorial recipe).
set -u
W=/tmp/work; SNAP=/tmp/snap; mkdir -p /tmp/carry $W
QWEN=qwen2.5-coder-1.5b-instruct-q4_k_m.gguf; GEMMA=gemma-3-270m-q4_k_m.gguf
bg() { # name, command: run in the snapshot with the lease environment, logged to $W/<name>.log
  echo "== $(date -u +%T) start $1" >> $W/phases.log; export QLORA_COMMIT=$(cat $SNAP/COMMIT)  # the first call's
  setsid nohup bash -c "cd $SNAP && . bench/lease_setup.sh >/dev/null && ($2); echo \"== \$(date -u +%T) exit \$? $1\" >> $W/phases.log" > $W/$1.log 2>&1 < /dev/null &
}
case $1 in
carry)
  mkdir -p /tmp/carry/incoming/gguf /tmp/carry/gguf && cp -r .carry/$2/. /tmp/carry/incoming/ || exit 1
  for d in wheels wheels_unsloth; do
    [ -d /tmp/carry/incoming/$d ] && mkdir -p /tmp/carry/$d && mv /tmp/carry/incoming/$d/* /tmp/carry/$d/ && rmdir /tmp/carry/incoming/$d
  done
  [ -d /tmp/carry/incoming/banking77 ] && mv /tmp/carry/incoming/banking77 /tmp/carry/
  [ $(ls /tmp/carry/incoming/gguf/$QWEN.part* 2>/dev/null | wc -l) = 26 ] && mv /tmp/carry/incoming/gguf/$QWEN.part* /tmp/carry/gguf/
  [ $(ls /tmp/carry/incoming/gguf/$GEMMA.part* 2>/dev/null | wc -l) = 6 ] && mv /tmp/carry/incoming/gguf/$GEMMA.part* /tmp/carry/gguf/
  echo "carried ($(du -sm /tmp/carry | cut -f1) MB so far): $(ls /tmp/carry/gguf | wc -l) whole-file pieces, $(ls /tmp/carry/incoming/gguf | wc -l) waiting, $(ls /tmp/carry/wheels_unsloth 2>/dev/null | wc -l) Unsloth wheels"
  if [ ! -d $SNAP ]; then  # the tree every job runs: the first call's checkout (committed), fixed
    mkdir -p $SNAP && cp -r qlora_helpers bench notebooks tests pyproject.toml constraints.txt $SNAP/ && echo "$QLORA_COMMIT" > $SNAP/COMMIT && cp .carry/jobs.sh /tmp/jobs.sh
  fi
  if [ -d /tmp/carry/banking77 ] && [ ! -e $W/main.started ] && [ -z "${NO_MAIN:-}" ]; then
    touch $W/main.started
    bg main "python3 -c 'import transformers, peft, bitsandbytes; print(transformers.__version__, peft.__version__, bitsandbytes.__version__)'
      python3 -m pytest -q -p no:cacheprovider tests/test_flat_optimizer.py -rA > $W/gpu_tests.log 2>&1
      echo \"== \$(date -u +%T) gpu tests exit \$?\" >> $W/phases.log
      mkdir -p $W/results
      python3 bench/cli.py speed --device cuda --profile t4 --sections env,speed --cells 7B:qlora --only-configs library_default,lever_default_per_tensor_8bit,lever_default_fused_adamw --steps 157 --warmup 20 --tag run14_h100_t4 --out $W/results > $W/speed7b.log 2>&1
      echo \"== \$(date -u +%T) speed7b exit \$?\" >> $W/phases.log
      PYTHONPATH=/tmp/site_unsloth:\$PWD python3 bench/unsloth_row.py --steps 157 --warmup 20 --out $W/results/unsloth_h100_t4_run14.json > $W/unsloth.log 2>&1
      echo \"== \$(date -u +%T) unsloth exit \$?\" >> $W/phases.log
      until [ -f /tmp/qcache/gguf/$QWEN ]; do sleep 2; . bench/lease_setup.sh > /dev/null; done
      python3 -c \"from qlora_helpers.offline_models import resolve_model_id as r; print(r('offline:qwen2.5-1.5b'))\" || exit 1
      bash /tmp/jobs.sh"
  fi ;;
poll)  # until SECONDS pass or a job exits: the phases, the GPU, each log's last line
  state() { echo "$(grep -c 'exit\|done' $W/phases.log 2>/dev/null) $(grep -ls 'Error\|Traceback' $W/*.log | wc -l)"; }
  end=$(( $(date +%s) + $2 )); s0=$(state)
  while [ $(date +%s) -lt $end ] && [ "$(state)" = "$s0" ]; do sleep 5; done
  cat $W/phases.log; nvidia-smi --query-gpu=name,memory.used,memory.total,utilization.gpu --format=csv,noheader
  for f in $W/*.log $W/results/sweep_*/*.log; do [ -f $f ] && echo "-- $(basename $f): $(grep -v '^\s*$' $f | tail -c 300 | tr '\r\n' '  ' | tail -c 200)"; done
  grep -l "Error\|Traceback" $W/*.log 2>/dev/null | while read f; do echo "!! $f"; grep -B2 -A3 "Error" $f | tail -12; done
  (cd $W && find . -name results.json -o -name '*.log' -o -path './results/*.json' -o -path './results/*/*.json' | tar -czf $OUT/partial.tgz -T -) ;;
collect)
  cp -r /tmp/qlora_sweep/locks_* $W/ 2>/dev/null
  tar --exclude='checkpoint*' --exclude='*.safetensors' --exclude='*.bin' --exclude='*.gguf' -czf $OUT/work.tgz -C $W . && ls -la $OUT ;;
esac
