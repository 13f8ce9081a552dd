#!/usr/bin/env bash
# What ran on the lent two-GPU machine (nvidia-h200-x2) after `. bench/lease_setup.sh`, each GPU
# emulating a T4 (fp16, 14.5 GiB) where it says so. Results and logs go to WORK_FOLDER.
# Usage: bash bench/lease_jobs.sh WORK_FOLDER PHASE...   (phases run in the order given)
#   reference         the reference render: 01 then 02 on GPU 0 while 03 runs on GPU 1, then 04 (one
#                     GPU per notebook, as on one T4); the folder becomes reference/smollm2-t4/
#   two-gpu-notebook  notebook 03 on both GPUs through the runner (notebook/all_gpus.py)
#   gemma             notebook 01 on Gemma 3 270M (its default) under the T4 profile
#   measure           GPU 0: the benchmark of today's code on the three notebooks' shapes with the
#                     step-cost levers, a memory snapshot of run2's b64 setup, the estimator cells
#                     (run4_h200_t4); GPU 1: the levers on real SmolLM2-135M (run4_h200_t4_smollm2),
#                     then their validation accuracy against today's QLoRA default (sweep_h200_t4_levers);
#                     then GPU 0: Unsloth on the same 7B checkpoint and batch (unsloth_h200_t4.json)
#   two-gpus-speed    the 7B QLoRA shape on one GPU against two (two_gpus_h200x2_t4_long)
#   retry             after the first lease lapsed (its files lost): run 5, 7B QLoRA with the compiled
#                     blocks on GPU 0, and the levers' accuracy sweep on GPU 1
#   two-gpus-full     the 7B QLoRA shape on one GPU against two over all 10,003 training rows, with a
#                     true one-GPU baseline (two_gpus_h200x2_t4_full)
#   closeout          GPU 0: 7B QLoRA with the compiled blocks (symbolic shapes) and fused AdamW
#                     (run6_h200_t4), the three estimator cells run 4 lost to the cap bug
#                     (run6_h200_estimator), then Unsloth's row again for its JSON; GPU 1: the levers
#                     on real SmolLM2-135M again for their JSON (run6_h200_t4_smollm2)
#   estimator-rest    the five estimator cells whose only record on today's code was run 4's transcript
#                     (run7_h200_estimator), on one GPU
#   two-gpus-accuracy real SmolLM2-135M, QLoRA at the notebook's effective batch on one GPU and on two,
#                     on today's code (two_gpus_h200x2_t4_accuracy)
#   graphs            one GPU: CUDA graphs of the decoder stack (TrainConfig.cuda_graphs) checked against the
#                     eager stack (graphs_check_*), timed against the default on real SmolLM2-135M and the 7B
#                     QLoRA shape (run8_*), then their validation accuracy on real SmolLM2 (sweep_h200_t4_graphs)
#   notebook-graphs   one GPU: notebook 03's steps on real SmolLM2-135M with cuda_graphs=True, then False
#                     (notebooks_h200_t4_graphs)
#   ckpt-long         one GPU: the 7B QLoRA shape over one epoch with graphs, fused AdamW and checkpointing only
#                     for batches over the estimator's no-checkpointing limit under a T4 (run10_h200_t4)
#   graphs-epoch      one GPU: the graphs checked again, then timed over one whole epoch against the default on
#                     real SmolLM2-135M and the 7B QLoRA shape (run9_*), then their validation accuracy under
#                     three seeds on real SmolLM2 (sweep_h200_t4_graphs_seeds)
set -u
WORK=${1:?a work folder}
shift
mkdir -p "$WORK/results"
RUN="python3 -m qlora_helpers.runners.run --profile smollm2-t4"
B="python3 bench/benchmark.py --device cuda --profile t4 --out $WORK/results --long-steps 0"
LEVERS=lever_fused_adamw,lever_compiled_layers,lever_no_checkpointing,lever_half_checkpointing,lever_all_half_checkpointing,lever_all
phase() { echo "== $(date -u +%H:%M:%S) $*" >> "$WORK/phases.log"; }
finished() { echo "exit $?" >> "$1"; }
for name in "$@"; do
  phase "$name"
  case $name in
    reference)
      (CUDA_VISIBLE_DEVICES=0 $RUN --run-dir "$WORK/smollm2-t4" --notebooks 01 02 > "$WORK/reference_gpu0.log" 2>&1; finished "$WORK/reference_gpu0.log") &
      (CUDA_VISIBLE_DEVICES=1 $RUN --run-dir "$WORK/smollm2-t4" --notebooks 03 > "$WORK/reference_gpu1.log" 2>&1; finished "$WORK/reference_gpu1.log") &
      wait
      $RUN --run-dir "$WORK/smollm2-t4" --notebooks 04 > "$WORK/reference_04.log" 2>&1; finished "$WORK/reference_04.log" ;;
    two-gpu-notebook)
      $RUN --run-dir "$WORK/two_gpus" --notebooks 03 > "$WORK/two_gpus.log" 2>&1; finished "$WORK/two_gpus.log" ;;
    gemma)
      CUDA_VISIBLE_DEVICES=0 $RUN --run-dir "$WORK/gemma" --notebooks 01 --set model_id=offline:gemma-3-270m \
        > "$WORK/gemma.log" 2>&1; finished "$WORK/gemma.log" ;;
    measure)
      (CUDA_VISIBLE_DEVICES=0 $B --sections env,build,speed,estimator --build 7B,0.5B,1.5B --steps 25 --warmup 3 \
         --only-configs tutorial,library_default,b64_len128_dropout0,$LEVERS --memory-snapshot b64_len128_dropout0 \
         --tag run4_h200_t4 > "$WORK/run4.log" 2>&1; finished "$WORK/run4.log"
       CUDA_VISIBLE_DEVICES=0 PYTHONPATH=/tmp/site_unsloth:$PWD python3 bench/unsloth_row.py --max-length 64 \
         --model /tmp/qlora_bench_models/Qwen2.5-7B --out "$WORK/results/unsloth_h200_t4.json" > "$WORK/unsloth.log" 2>&1
       finished "$WORK/unsloth.log") &
      (CUDA_VISIBLE_DEVICES=1 $B --sections env,speed --cells smollm2:qlora --steps 40 --warmup 3 \
         --only-configs tutorial,library_default,$LEVERS --tag run4_h200_t4_smollm2 > "$WORK/run4_smollm2.log" 2>&1
       finished "$WORK/run4_smollm2.log"
       python3 bench/sweep.py run --gpus 1 --tag h200_t4_levers --max-seconds 300 --out-dir "$WORK/results" \
         --work-dir /tmp/sweep_work --candidates qlora_b64_lr2e-3,qlora_b64_lr2e-3_levers > "$WORK/sweep_levers.log" 2>&1
       finished "$WORK/sweep_levers.log") &
      wait ;;
    two-gpus-speed)
      # reuse the benchmark's random 7B (built by `measure`) instead of writing another 15 GB
      if [ -f /tmp/qlora_bench_models/Qwen2.5-7B/config.json ] && [ ! -e /tmp/qlora_two_gpus/qwen2.5-7b-random ]; then
        mkdir -p /tmp/qlora_two_gpus/qwen2.5-7b-random
        for f in /tmp/qlora_bench_models/Qwen2.5-7B/*.safetensors /tmp/qlora_bench_models/Qwen2.5-7B/*.json; do
          case $(basename "$f") in tokenizer*|special_tokens*) ;; *) ln -s "$f" /tmp/qlora_two_gpus/qwen2.5-7b-random/ ;; esac
        done
      fi
      python3 bench/two_gpus.py --parts speed --speed-train-samples 3000 --tag h200x2_t4_long \
        --out-dir "$WORK/results" > "$WORK/two_gpus_speed.log" 2>&1; finished "$WORK/two_gpus_speed.log" ;;
    retry)  # the lease lapsed before measure's and two-gpus-speed's files came back: their key parts again
      (CUDA_VISIBLE_DEVICES=0 $B --sections env,build,speed --build 7B --cells 7B:qlora --steps 25 --warmup 3 \
         --only-configs library_default,lever_compiled_layers,lever_compiled_fused_adamw \
         --tag run5_h200_t4 > "$WORK/run5.log" 2>&1; finished "$WORK/run5.log") &
      (python3 bench/sweep.py run --gpus 1 --tag h200_t4_levers --max-seconds 200 --max-train 4500 \
         --out-dir "$WORK/results" --work-dir /tmp/sweep_work --candidates qlora_b64_lr2e-3,qlora_b64_lr2e-3_levers \
         > "$WORK/sweep_levers.log" 2>&1; finished "$WORK/sweep_levers.log") &
      wait ;;
    two-gpus-full)
      python3 bench/two_gpus.py --parts speed --speed-train-samples 10003 --tag h200x2_t4_full \
        --out-dir "$WORK/results" > "$WORK/two_gpus_full.log" 2>&1; finished "$WORK/two_gpus_full.log" ;;
    closeout)
      (CUDA_VISIBLE_DEVICES=0 $B --sections env,build,speed --build 7B --cells 7B:qlora --steps 25 --warmup 3 \
         --only-configs library_default,lever_compiled_layers,lever_compiled_fused_adamw \
         --tag run6_h200_t4 > "$WORK/run6.log" 2>&1; finished "$WORK/run6.log"
       CUDA_VISIBLE_DEVICES=0 $B --sections env,estimator --cells 1.5B:full,7B:full,7B:lora \
         --tag run6_h200_estimator > "$WORK/run6_estimator.log" 2>&1; finished "$WORK/run6_estimator.log"
       . bench/lease_setup.sh > "$WORK/setup_unsloth.log" 2>&1  # installs Unsloth if its wheels came since
       CUDA_VISIBLE_DEVICES=0 PYTHONPATH=/tmp/site_unsloth:$PWD python3 bench/unsloth_row.py --max-length 64 \
         --model /tmp/qlora_bench_models/Qwen2.5-7B --out "$WORK/results/unsloth_h200_t4.json" > "$WORK/unsloth.log" 2>&1
       finished "$WORK/unsloth.log") &
      (CUDA_VISIBLE_DEVICES=1 $B --sections env,speed --cells smollm2:qlora --steps 40 --warmup 3 \
         --only-configs tutorial,library_default,$LEVERS --tag run6_h200_t4_smollm2 > "$WORK/run6_smollm2.log" 2>&1
       finished "$WORK/run6_smollm2.log") &
      wait ;;
    estimator-rest)
      CUDA_VISIBLE_DEVICES=0 $B --sections env,estimator --cells 0.5B:full,0.5B:lora,0.5B:qlora,1.5B:lora,1.5B:qlora \
        --tag run7_h200_estimator > "$WORK/run7_estimator.log" 2>&1; finished "$WORK/run7_estimator.log" ;;
    two-gpus-accuracy)
      python3 bench/two_gpus.py --parts accuracy --tag h200x2_t4_accuracy --out-dir "$WORK/results" \
        > "$WORK/two_gpus_accuracy.log" 2>&1; finished "$WORK/two_gpus_accuracy.log" ;;
    graphs)
      GRAPH_LEVERS=library_default,lever_fused_adamw,lever_cuda_graphs,lever_cuda_graphs_fused_adamw
      QLORA_EMULATE_GPU=t4 python3 bench/graphs_check.py --model offline:smollm2-135m \
        --out "$WORK/results/graphs_check_h200_t4_smollm2.json" > "$WORK/graphs_check.log" 2>&1; finished "$WORK/graphs_check.log"
      $B --sections env,speed --cells smollm2:qlora --steps 40 --warmup 3 --only-configs $GRAPH_LEVERS \
        --tag run8_h200_t4_smollm2 > "$WORK/run8_smollm2.log" 2>&1; finished "$WORK/run8_smollm2.log"
      $B --sections env,build,speed --build 7B --cells 7B:qlora --steps 25 --warmup 3 --only-configs $GRAPH_LEVERS \
        --tag run8_h200_t4 > "$WORK/run8.log" 2>&1; finished "$WORK/run8.log"
      python3 bench/sweep.py run --gpus 0 --tag h200_t4_graphs --max-seconds 200 --max-train 4500 \
        --out-dir "$WORK/results" --work-dir /tmp/sweep_work --candidates qlora_b64_lr2e-3,qlora_b64_lr2e-3_graphs \
        > "$WORK/sweep_graphs.log" 2>&1; finished "$WORK/sweep_graphs.log" ;;
    graphs-epoch)
      # graphs.py warmed up once per stream (not per shape) and cleared cuBLAS's workspaces: its gradients against
      # the eager stack again (graphs_check_*_<commit>), then one whole epoch (157 steps of 64 from 10,003 rows, no
      # step left out as warm-up: every recording counted) against the default on real SmolLM2-135M and the 7B
      # QLoRA shape (run9_*), then validation accuracy under three seeds on real SmolLM2 (sweep_h200_t4_graphs_seeds)
      GRAPH_LEVERS=library_default,lever_cuda_graphs,lever_cuda_graphs_fused_adamw
      COMMIT=${QLORA_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
      for model in tiny-qwen2 smollm2-135m; do
        QLORA_EMULATE_GPU=t4 python3 bench/graphs_check.py --model offline:$model \
          --out "$WORK/results/graphs_check_h200_t4_${model%%-*}_$COMMIT.json" >> "$WORK/graphs_check.log" 2>&1
        finished "$WORK/graphs_check.log"
      done
      $B --sections env,speed --cells smollm2:qlora --steps 157 --warmup 0 --only-configs $GRAPH_LEVERS \
        --tag run9_h200_t4_smollm2 > "$WORK/run9_smollm2.log" 2>&1; finished "$WORK/run9_smollm2.log"
      $B --sections env,build,speed --build 7B --cells 7B:qlora --steps 157 --warmup 0 --only-configs $GRAPH_LEVERS \
        --tag run9_h200_t4 > "$WORK/run9.log" 2>&1; finished "$WORK/run9.log"
      python3 bench/sweep.py run --gpus 0 --tag h200_t4_graphs_seeds --seeds 42,1,2 --max-seconds 200 --max-train 4500 \
        --out-dir "$WORK/results" --work-dir /tmp/sweep_work \
        --candidates qlora_b64_lr2e-3,qlora_b64_lr2e-3_graphs,qlora_b64_lr2e-3_graphs_fused \
        > "$WORK/sweep_graphs_seeds.log" 2>&1; finished "$WORK/sweep_graphs_seeds.log" ;;
    notebook-graphs)
      # notebook 03's steps (train_all_gpus.run_notebook_steps: what its cells call) in one process on real
      # SmolLM2-135M under the smollm2-t4 profile, with the cuda_graphs parameter on, then off. Not through
      # train_all_gpus's command line: its runner.notebook_parameters reads the parameters cell with nbformat,
      # which the lent machine lacks (the first try failed there)
      mkdir -p "$WORK/results/notebooks_h200_t4_graphs"
      for mode in graphs eager; do
        python3 - $mode "$WORK/nb_$mode" > "$WORK/notebook_$mode.log" 2>&1 <<'PY'
import os, sys
from qlora_helpers.runners import profiles
profile = profiles.get_profile("smollm2-t4")
for key, value in profile.env.items():
    os.environ.setdefault(key, value)
from qlora_helpers.notebook.parameters import NotebookParameters
from qlora_helpers.runners.train_all_gpus import run_notebook_steps
values = {**profile.parameters("03_qlora_qwen2.5_7b"), "run_dir": sys.argv[2], "cuda_graphs": sys.argv[1] == "graphs",
          "data_dir": os.environ["BANKING77_DIR"], "data_source": "local"}
run_notebook_steps(NotebookParameters(notebook="03_qlora_qwen2.5_7b", **values))
PY
        finished "$WORK/notebook_$mode.log"
        cp "$WORK/nb_$mode/03_qlora_qwen2.5_7b/results.json" "$WORK/results/notebooks_h200_t4_graphs/${mode}_03.json"
      done ;;
    ckpt-long)
      # checkpointing only for the batches too long to train without it under a T4's memory (the estimator:
      # over 64 x 16 tokens), with graphs and fused AdamW, over one epoch of the 7B QLoRA shape (run10_h200_t4)
      $B --sections env,build,speed --build 7B --cells 7B:qlora --steps 157 --warmup 0 \
        --only-configs library_default,lever_cuda_graphs_fused_adamw,lever_cuda_graphs_fused_adamw_ckpt_long \
        --tag run10_h200_t4 > "$WORK/run10.log" 2>&1; finished "$WORK/run10.log" ;;
    *) echo "unknown phase $name" >&2; exit 2 ;;
  esac
done
phase done
