# The sweep as it ran (09:08:46 UTC, by hand in the snapshot after `. bench/lease_setup.sh`): .carry/jobs.sh passed
# --method-model full=... with QLoRA candidates only, which sweep.py refuses, so it was started directly.
python3 bench/sweep.py run --model offline:qwen2.5-1.5b --candidates qlora_default,qlora_tutorial --tag t4_qlora_5x \
  --out-dir /tmp/work/results --max-seconds 380 --eval-every 500 --solo-warmup 20 --solo-steps 30
