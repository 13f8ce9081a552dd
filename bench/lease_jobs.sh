#!/usr/bin/env bash
# The phases that made the committed results on lent GPU machines (bench/README.md says which lease ran
# which, at what commit), after `. bench/lease_setup.sh`, each GPU emulating a T4 where it says so.
# Usage: bash bench/lease_jobs.sh WORK_FOLDER PHASE...   (in the order given; logs and results/ in WORK_FOLDER)
set -u
WORK=${1:?a work folder}
shift
mkdir -p "$WORK/results"
RUN="python3 -m qlora_helpers.runners.run --profile smollm2-t4"
B="python3 bench/cli.py speed --device cuda --profile t4 --out $WORK/results"
SWEEP="python3 bench/cli.py sweep run --max-seconds 200 --max-train 4500 --out-dir $WORK/results --work-dir /tmp/sweep_work"
LEVERS=lever_fused_adamw,lever_compiled_layers,lever_no_checkpointing,lever_half_checkpointing,lever_all_half_checkpointing,lever_all
GRAPHS=library_default,lever_cuda_graphs,lever_cuda_graphs_fused_adamw
job() { local name=$1; shift; "$@" > "$WORK/$name.log" 2>&1; echo "exit $?" >> "$WORK/$name.log"; }
for phase in "$@"; do
  echo "== $(date -u +%H:%M:%S) $phase" >> "$WORK/phases.log"
  case $phase in
    reference)  # reference/smollm2-t4/: 01 then 02 on GPU 0 while 03 runs on GPU 1, then 04
      CUDA_VISIBLE_DEVICES=0 job reference_gpu0 $RUN --run-dir "$WORK/smollm2-t4" --notebooks 01 02 &
      CUDA_VISIBLE_DEVICES=1 job reference_gpu1 $RUN --run-dir "$WORK/smollm2-t4" --notebooks 03 &
      wait; job reference_04 $RUN --run-dir "$WORK/smollm2-t4" --notebooks 04 ;;
    two-gpu-notebook)  # notebooks_h200x2_t4/two_gpus_03.json: notebook 03 trains on both GPUs (notebook/all_gpus.py)
      job two_gpus $RUN --run-dir "$WORK/two_gpus" --notebooks 03 ;;
    gemma)  # notebooks_h200x2_t4/gemma_01.json
      CUDA_VISIBLE_DEVICES=0 job gemma $RUN --run-dir "$WORK/gemma" --notebooks 01 --set model_id=offline:gemma-3-270m ;;
    two-gpus-speed|two-gpus-full|two-gpus-accuracy)  # two_gpus_h200x2_t4_{long,full,accuracy}
      case $phase in two-gpus-speed) args="--parts speed --tag h200x2_t4_long";;
        two-gpus-full) args="--parts speed --speed-train-samples 10003 --tag h200x2_t4_full";;
        *) args="--parts accuracy --tag h200x2_t4_accuracy";; esac
      job "$phase" python3 bench/cli.py two-gpus $args --out-dir "$WORK/results" ;;
    retry)  # run5_h200_t4 on GPU 0, sweep_h200_t4_levers on GPU 1
      CUDA_VISIBLE_DEVICES=0 job run5 $B --cells 7B:qlora --sections env,speed \
        --only-configs library_default,lever_compiled_layers,lever_compiled_fused_adamw --tag run5_h200_t4 &
      job sweep_levers $SWEEP --gpus 1 --tag h200_t4_levers --candidates qlora_b64_lr2e-3,qlora_b64_lr2e-3_levers &
      wait ;;
    closeout)  # run6_h200_t4 and run6_h200_estimator on GPU 0, run6_h200_t4_smollm2 on GPU 1
      (export CUDA_VISIBLE_DEVICES=0
       job run6 $B --cells 7B:qlora --sections env,speed --only-configs library_default,lever_compiled_layers,lever_compiled_fused_adamw --tag run6_h200_t4
       job run6_estimator $B --sections env,estimator --cells 1.5B:full,7B:full,7B:lora --tag run6_h200_estimator) &
      CUDA_VISIBLE_DEVICES=1 job run6_smollm2 $B --sections env,speed --cells smollm2:qlora --steps 40 \
        --only-configs tutorial,library_default,$LEVERS --tag run6_h200_t4_smollm2 &
      wait ;;
    estimator-rest)  # run7_h200_estimator
      job run7 $B --sections env,estimator --cells 0.5B:full,0.5B:lora,0.5B:qlora,1.5B:lora,1.5B:qlora --tag run7_h200_estimator ;;
    graphs)  # graphs_check_h200_t4_smollm2, run8_*, sweep_h200_t4_graphs
      QLORA_EMULATE_GPU=t4 job graphs_check python3 bench/cli.py graphs-check --out "$WORK/results/graphs_check_h200_t4_smollm2.json"
      job run8_smollm2 $B --sections env,speed --cells smollm2:qlora --steps 40 --only-configs $GRAPHS,lever_fused_adamw --tag run8_h200_t4_smollm2
      job run8 $B --sections env,speed --cells 7B:qlora --only-configs $GRAPHS,lever_fused_adamw --tag run8_h200_t4
      job sweep_graphs $SWEEP --gpus 0 --tag h200_t4_graphs --candidates qlora_b64_lr2e-3,qlora_b64_lr2e-3_graphs ;;
    graphs-epoch)  # graphs_check_h200_t4_*_<commit>, run9_* (one whole epoch, no warm-up left out), sweep_h200_t4_graphs_seeds
      COMMIT=${QLORA_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
      for model in tiny-qwen2 smollm2-135m; do
        QLORA_EMULATE_GPU=t4 job "graphs_check_$model" python3 bench/cli.py graphs-check --model offline:$model \
          --out "$WORK/results/graphs_check_h200_t4_${model%%-*}_$COMMIT.json"
      done
      job run9_smollm2 $B --sections env,speed --cells smollm2:qlora --steps 157 --warmup 0 --only-configs $GRAPHS --tag run9_h200_t4_smollm2
      job run9 $B --sections env,speed --cells 7B:qlora --steps 157 --warmup 0 --only-configs $GRAPHS --tag run9_h200_t4
      job sweep_graphs_seeds $SWEEP --gpus 0 --tag h200_t4_graphs_seeds --seeds 42,1,2 \
        --candidates qlora_b64_lr2e-3,qlora_b64_lr2e-3_graphs,qlora_b64_lr2e-3_graphs_fused ;;
    notebook-graphs)  # notebooks_h200_t4_graphs/: notebook 03's steps with cuda_graphs on, then off (one process;
      # not through train_all_gpus's command line, whose parameters cell needs nbformat, which the lent machine lacks)
      mkdir -p "$WORK/results/notebooks_h200_t4_graphs"
      for mode in graphs eager; do
        job "notebook_$mode" python3 -c "import os, sys
from qlora_helpers.runners import profiles
profile = profiles.get_profile('smollm2-t4')
for key, value in profile.env.items(): os.environ.setdefault(key, value)
from qlora_helpers.notebook.parameters import NotebookParameters
from qlora_helpers.runners.train_all_gpus import run_notebook_steps
run_notebook_steps(NotebookParameters(notebook='03_qlora_qwen2.5_7b', **{**profile.parameters('03_qlora_qwen2.5_7b'),
  'run_dir': sys.argv[2], 'cuda_graphs': sys.argv[1] == 'graphs', 'data_dir': os.environ['BANKING77_DIR'], 'data_source': 'local'}))" \
          $mode "$WORK/nb_$mode"
        cp "$WORK/nb_$mode/03_qlora_qwen2.5_7b/results.json" "$WORK/results/notebooks_h200_t4_graphs/${mode}_03.json"
      done ;;
    ckpt-long)  # run10_h200_t4: graphs, fused AdamW and checkpointing only the batches over 64 x 16 tokens, one epoch
      job run10 $B --sections env,speed --cells 7B:qlora --steps 157 --warmup 0 \
        --only-configs library_default,lever_cuda_graphs_fused_adamw,lever_cuda_graphs_fused_adamw_ckpt_long --tag run10_h200_t4 ;;
    *) echo "unknown phase $phase" >&2; exit 2 ;;
  esac
done
echo "== $(date -u +%H:%M:%S) done" >> "$WORK/phases.log"
