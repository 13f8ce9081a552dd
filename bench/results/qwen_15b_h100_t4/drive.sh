#!/usr/bin/env bash
# Lease driver for the Qwen2.5-1.5B runs (issue 25/28): `bash .carry/drive.sh carry cNN` copies one carried piece
# to /tmp/carry and starts whatever its arrival makes possible (in the background, setsid, so it outlives the call);
# `bash .carry/drive.sh poll SECONDS` reports; `bash .carry/drive.sh collect` packs the results into $OUT.
set -u
W=/tmp/work; SNAP=/tmp/snap; mkdir -p /tmp/carry $W
GEMMA=gemma-3-270m-q4_k_m.gguf; QWEN=qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
pieces() { ls /tmp/carry/gguf/$1.part* 2>/dev/null | wc -l; }
bg() { # name, command: run in the snapshot with the lease environment (after the install), logged to $W/<name>.log
  echo "== $(date -u +%T) start $1" >> $W/phases.log
  wait_install="until grep -q 'exit 0 install' $W/phases.log; do sleep 2; done"; [ $1 = install ] && wait_install=true
  setsid nohup bash -c "cd $SNAP && $wait_install && . bench/lease_setup.sh >/dev/null && ($2); echo \"== \$(date -u +%T) exit \$? $1\" >> $W/phases.log" > $W/$1.log 2>&1 < /dev/null &
}
case $1 in
carry)
  # pieces wait in incoming/ until their file is whole, so that lease_setup.sh never joins part of one
  mkdir -p /tmp/carry/incoming/gguf /tmp/carry/gguf && cp -r .carry/$2/. /tmp/carry/incoming/ || exit 1
  [ -d /tmp/carry/incoming/wheels ] && mkdir -p /tmp/carry/wheels && mv /tmp/carry/incoming/wheels/* /tmp/carry/wheels/ && rmdir /tmp/carry/incoming/wheels
  [ -d /tmp/carry/incoming/banking77 ] && mv /tmp/carry/incoming/banking77 /tmp/carry/
  for f in "$GEMMA:5" "$QWEN:20"; do name=${f%:*}
    [ $(ls /tmp/carry/incoming/gguf/$name.part* 2>/dev/null | wc -l) = ${f#*:} ] && mv /tmp/carry/incoming/gguf/$name.part* /tmp/carry/gguf/
  done
  echo "carried ($(du -sm /tmp/carry | cut -f1) MB so far): $(ls /tmp/carry/gguf | wc -l) whole-file pieces, $(ls /tmp/carry/incoming/gguf | wc -l) waiting"
  if [ ! -d $SNAP ]; then  # the tree every job runs: this call's, fixed (later calls replace the repo copy)
    mkdir -p $SNAP && tar --exclude=./.carry --exclude=./.git -cf - . | tar -xf - -C $SNAP && echo "$QLORA_COMMIT" > $SNAP/COMMIT
  fi
  if [ -d /tmp/carry/banking77 ] && [ ! -e $W/install.started ]; then
    touch $W/install.started; bg install "python3 -c 'import transformers, peft, bitsandbytes, datasets, papermill, nbconvert; print(transformers.__version__, peft.__version__)'"
  fi
  if [ "$(pieces $GEMMA)" = 5 ] && [ ! -e $W/gemma.started ]; then
    touch $W/gemma.started
    bg gemma "python3 -c \"from qlora_helpers.offline_models import resolve_model_id as r; print(r('offline:gemma-3-270m'))\" || exit 1
      python3 bench/sweep.py run --model offline:gemma-3-270m --candidates full_b32_lr2e-4,full_tutorial --tag gemma_h100_t4 --out-dir $W/results --max-seconds 240 > $W/sweep_gemma.log 2>&1 &
      for i in \$(seq 200); do [ \$(ls /tmp/qlora_sweep/locks_gemma_h100_t4_0/solo_done.* 2>/dev/null | wc -l) -ge 2 ] && break; sleep 1; done
      (for nb in 02 03; do python3 -m qlora_helpers.runners.train_all_gpus --profile qwen-t4 --notebook \$nb --run-dir $W/gemma_\$nb --set model_id=offline:gemma-3-270m > $W/gemma_\$nb.log 2>&1 & done; wait); wait"
  fi
  ;;
launch)  # once all pieces are here: `launch full` (with the sweep) or `launch lite` (the notebooks only)
  if [ "$(pieces $QWEN)" = 20 ] && [ ! -e $W/qwen.started ]; then
    MODE=$2
    touch $W/qwen.started
    SNAP=/tmp/snapq; mkdir -p $SNAP && tar --exclude=./.carry --exclude=./.git -cf - . | tar -xf - -C $SNAP && echo "$QLORA_COMMIT" > $SNAP/COMMIT  # the tree of this, the last, call
    # the sweep first, alone, until each worker has had its solo window; then the rest side by side
    bg qwen "python3 -c \"from qlora_helpers.offline_models import resolve_model_id as r; print(r('offline:qwen2.5-1.5b'))\" || exit 1
      [ $MODE = full ] && [ -e $W/gemma.started ] && for i in \$(seq 300); do grep -q 'exit .* gemma' $W/phases.log && break; sleep 1; done  # Gemma's jobs off the GPU first
      [ $MODE = full ] && python3 bench/sweep.py run --model offline:qwen2.5-1.5b --candidates lora_default,lora_tutorial,qlora_default,qlora_tutorial --tag qwen15_h100_t4 --out-dir $W/results --max-seconds 300 > $W/sweep.log 2>&1 &
      for i in \$(seq 200); do [ $MODE = lite ] || [ \$(ls /tmp/qlora_sweep/locks_qwen15_h100_t4_0/solo_done.* 2>/dev/null | wc -l) -ge 4 ] && break; sleep 1; done
      echo \"== \$(date -u +%T) solo windows done\" >> $W/phases.log
      for nb in \$([ -e $W/gemma.started ] && echo 01) 02 03; do python3 -m qlora_helpers.runners.run --profile qwen-t4 --run-dir $W/qwen-t4 --notebooks \$nb > $W/ref\$nb.log 2>&1 & done
      for nb in 02 03; do for s in 1 2; do python3 -m qlora_helpers.runners.train_all_gpus --profile qwen-t4 --notebook \$nb --run-dir $W/seed\${s}_\$nb --set seed=\$s > $W/seed\${s}_\$nb.log 2>&1 & done; done
      python3 -m qlora_helpers.runners.run --profile qwen-t4 --run-dir $W/qwen-t4-lr2e-3 --notebooks 02 --set learning_rate=0.002 > $W/recovery.log 2>&1 &
      [ -e $W/gemma.started ] || exit 0; until [ -f $W/qwen-t4/02_lora_qwen2.5_1.5b/results.json ] && [ -f $W/qwen-t4/03_qlora_qwen2.5_7b/results.json ] && [ -f $W/qwen-t4/01_full_precision_baseline/results.json ]; do sleep 5; done
      python3 -m qlora_helpers.runners.run --profile qwen-t4 --run-dir $W/qwen-t4 --notebooks 04 > $W/ref04.log 2>&1; wait"
  fi ;;
poll)  # until SECONDS pass or a job exits: the phases, the GPU, each log's last line
  state() { echo "$(grep -c exit $W/phases.log 2>/dev/null) $(grep -ls 'Error\|Traceback' $W/*.log | wc -l)"; }
  end=$(( $(date +%s) + $2 )); s0=$(state)
  while [ $(date +%s) -lt $end ] && [ "$(state)" = "$s0" ]; do sleep 5; done
  cat $W/phases.log; nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader
  for f in $W/*.log; do echo "-- $(basename $f): $(grep -v '^\s*$' $f | tail -c 300 | tr '\r\n' '  ' | tail -c 220)"; done
  grep -l "Error\|Traceback" $W/*.log 2>/dev/null | while read f; do echo "!! $f"; grep -B2 -A3 "Error" $f | tail -12; done
  # what has finished so far comes back with every poll, in case the lease ends before `collect`
  (cd $W && find . -name results.json -o -name '*.log' -o -path './results/*.json' | tar -czf $OUT/partial.tgz -T -) ;;
collect)
  cp -r /tmp/qlora_sweep/locks_* $W/ 2>/dev/null
  tar --exclude='checkpoint*' --exclude='*.safetensors' --exclude='*.bin' -czf $OUT/work.tgz -C $W . && ls -la $OUT ;;
esac
