#!/usr/bin/env python3
"""Build bench/results/SUMMARY.md from the raw JSON of the device runs (no GPU needed).

    python bench/summarize.py            # reads bench/results/run*.json, writes SUMMARY.md

Peaks are reported above what earlier cells of the same process left allocated: run 2 measured
0.5B full and 1.5B LoRA after the 7B cell, which left 1.08 GiB allocated (fixed from run 3 on by
`start_cell`); those two cells' peaks are corrected here by that baseline, which the JSON records
as the load's `allocated_before_bytes`.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from qlora_helpers import memory  # noqa: E402

GIB = 2**30
RESULTS = Path(__file__).with_name("results")
TARGET_QLORA, TARGET_OTHERS, PEAK_LIMIT = 8.0, 3.0, 14.0
# How much more a later speed setup of one model may start with than the first (cuBLAS's workspace for
# the first backward, ~34 MiB, is made by then); more means a setup left memory behind, which an
# estimator cell measured later in the same process would count in its peak.
LEFTOVER_LIMIT = 64 * 2**20  # bytes
# Estimator cells that measured something else, for a reason the JSON cannot show: tag -> the reason.
MISMEASURED_ESTIMATOR_RUNS = {
    "run10_h200_t4": "measured while the checkpointing limit of the setup before it (64 x 16 tokens) was still "
                     "on, so its 16 x 64 batches trained without checkpointing (bench/runs.py did not undo the "
                     "limit; it does since run 10: training.release_training_state)",
}


def load_runs(folder: Path = RESULTS) -> dict[str, dict]:
    """Every run*.json by tag, in the order the runs were made (run 10 after run 9, not after run 1)."""
    paths = sorted(folder.glob("run*.json"), key=lambda p: (int(re.match(r"run(\d+)", p.stem).group(1)), p.stem))
    return {p.stem: json.loads(p.read_text()) for p in paths}


def speed_rows(runs: dict[str, dict]) -> list[dict]:
    """Speed rows of runs 2 and later (run 1 was the pipeline check: its timings include the
    profiler's teardown, fixed before run 2)."""
    rows = []
    for tag, result in runs.items():
        if tag.startswith("run1_"):
            continue
        tflops = result.get("env", {}).get("fp16_matmul_tflops")
        tutorial = {r["method"]: r.get("examples_per_second") for r in result.get("speed", [])
                    if r["config"] == "tutorial"}
        for r in result.get("speed", []):
            baseline = r.get("cell_baseline_bytes")
            peak = r["peak_bytes"]
            if baseline is None:  # run 2: absolute peak; subtract what was allocated before the load
                load = result.get("loads", {}).get(f"{r['model']}:{r['method']}", {})
                peak -= load.get("allocated_before_bytes", 0)
            eps = r.get("examples_per_second")
            rows.append({**r, "run": tag, "commit": result.get("env", {}).get("commit"), "peak_gib": peak / GIB,
                         "tflops": tflops,
                         "vs_tutorial": eps / tutorial[r["method"]] if eps and tutorial.get(r["method"]) else None})
    return rows


def _f(v, fmt="{:.1f}"):
    return "-" if v is None else fmt.format(v)


def speed_table(rows: list[dict]) -> list[str]:
    out = ["| run | model | config | batch x accum | max len | ckpt | LoRA dropout | optimizer | ex/s | real tok/s | "
           "x tutorial (same run) | peak GiB | padding | median step s | MFU | HFU | useful MFU | steps | status |",
           "|" + " --- |" * 19]
    for r in rows:
        pad = "128 (fixed)" if r.get("fixed_padding") else str(r["max_length"])
        out.append(
            f"| {r['run'].split('_', 1)[0]} | {r['model'].replace('Qwen2.5-', '')} {r['method']} | {r['config']} | "
            f"{r['batch_size']} x {r['gradient_accumulation']} | {pad} | {'on' if r['gradient_checkpointing'] else 'off'} | "
            f"{r['lora_dropout'] if r['method'] != 'full' else '-'} | {r['optimizer']} | {_f(r.get('examples_per_second'))} | "
            f"{_f(r.get('real_tokens_per_second'), '{:.0f}')} | {_f(r['vs_tutorial'], '{:.2f}x')} | {r['peak_gib']:.2f} | "
            f"{_f(r.get('padding_share'), '{:.0%}')} | {_f(r.get('median_step_seconds'), '{:.3f}')} | "
            f"{_f(r.get('mfu'), '{:.1%}')} | {_f(r.get('hfu'), '{:.1%}')} | {_f(r.get('useful_mfu'), '{:.1%}')} | "
            f"{r.get('timed_steps', 0)} | {r['status']} |")
    return out


def leftover_bytes(result: dict) -> int:
    """The most memory (bytes) a speed setup of a run started with above the first setup of the same
    model: what earlier setups left allocated (run 8: the CUDA graphs of 54f5065, fixed in fd55589)."""
    first: dict[str, int] = {}
    worst = 0
    for r in result.get("speed", []):
        start = r.get("start_allocated_bytes")
        if start is not None:
            first.setdefault(r["model"], start)
            worst = max(worst, start - first[r["model"]])
    return worst


def set_aside_estimator_runs(runs: dict[str, dict]) -> dict[str, int]:
    """Runs whose estimator cells measured memory an earlier setup left behind: tag -> leftover bytes."""
    return {tag: left for tag, result in runs.items() if result.get("estimator")
            and (left := leftover_bytes(result)) > LEFTOVER_LIMIT}


def set_aside_reasons(runs: dict[str, dict]) -> dict[str, str]:
    """Runs whose estimator cells are left out of the table, each with why."""
    reasons = {tag: f"measured after a setup that left {left / 2**20:.0f} MiB allocated into the next one (see "
                    "\"CUDA graphs against the eager stack\" above)" for tag, left in set_aside_estimator_runs(runs).items()}
    return {**reasons, **{tag: why for tag, why in MISMEASURED_ESTIMATOR_RUNS.items() if tag in runs}}


def estimator_rows(runs: dict[str, dict]) -> list[dict]:
    """One measured row per model x method (the latest run's; run 1's cells were the calibration
    run, and runs in `set_aside_reasons` measured something else), with the prediction of the
    estimator as it is now."""
    latest: dict[tuple, dict] = {}
    set_aside = set_aside_reasons(runs)
    for tag, result in runs.items():
        if tag.startswith("run1_") or tag in set_aside:
            continue
        for r in result.get("estimator", []):
            if r.get("status") == "ok" and r["model"].startswith("Qwen2.5"):
                latest[(r["model"], r["method"])] = {**r, "run": tag}
    rows = []
    for (model, method), r in sorted(latest.items(), key=lambda kv: (memory.QWEN2_5[kv[0][0][8:]].linear_params,
                                                                      ("full", "lora", "qlora").index(kv[0][1]))):
        dropout = r.get("lora_dropout", 0.05 if method != "full" else 0.0)  # runs 2-3: the default then
        est = memory.estimate(model[8:], method, batch_size=r["batch_size"], seq_len=r["seq_len"],
                              gradient_checkpointing=r["gradient_checkpointing"], optimizer=r["optimizer"],
                              lora_dropout=dropout)
        rows.append({**r, "lora_dropout": dropout, "estimated_footprint_bytes": est.footprint_bytes,
                     "estimated_peak_bytes": est.peak_bytes,
                     "footprint_error": est.footprint_bytes / r["measured_footprint_bytes"] - 1,
                     "peak_error": est.peak_bytes / r["measured_peak_bytes"] - 1})
    return rows


def profile_table(rows: list[dict]) -> list[str]:
    profiled = [r for r in rows if r.get("profile", {}).get("gpu_ops")]
    if not profiled:
        return []
    lines = ["### Where a step's time goes (torch.profiler, one step)", "",
             "| run | model | config | GPU ops per step | GPU busy ms | step wall ms (profiled) | GPU busy |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in profiled:
        p = r["profile"]
        lines.append(f"| {r['run'].split('_', 1)[0]} | {r['model']} {r['method']} | {r['config']} | {p['gpu_ops']:,} | "
                     f"{p['gpu_busy_ms']:.0f} | {p['profiled_step_wall_ms']:.0f} | "
                     f"{p['gpu_busy_ms'] / p['profiled_step_wall_ms']:.0%} |")
    return lines + [""]


def _demoted(path: Path) -> list[str]:
    """A generated markdown file with its headings one level down, to sit under this file's."""
    return ["#" + line if line.startswith("#") else line for line in path.read_text().splitlines()] + [""]


def step_cost_section(current: dict[str, dict], results_dir: Path) -> list[str]:
    """Runs of the code as committed (each records its commit and versions): the step-cost levers
    against today's default, and the transcripts of runs whose files were lost."""
    lines = ["## Step cost on today's code: levers against the QLoRA default (issue 12)", "",
             "Same benchmark and T4 profile as the older runs below; each run's commit and versions are in its "
             "JSON. `library_default` is what notebook 03 trains (micro-batch 64, checkpointing, paged 8-bit "
             "AdamW); each `lever_*` row changes one thing in the same run: `fused_adamw` (torch's fused fp32 "
             "AdamW instead of the 8-bit one), `compiled_layers` (TrainConfig.compile_layers: torch.compile of "
             "each decoder layer's blocks, the checkpoint staying eager around them), `no_checkpointing`, "
             "`half_checkpointing` (every other layer), `cuda_graphs` (TrainConfig.cuda_graphs: the decoder "
             "stack's forward and backward recorded once per batch shape as CUDA graphs, then replayed), "
             "`ckpt_long` (TrainConfig.checkpoint_above_tokens: checkpointing only micro-batches over the "
             "estimator's no-checkpointing room on a T4, 64 x 16 tokens for the 7B; its HFU still counts a "
             "recomputation for every step), and combinations. The accuracy check of the levers on real weights "
             "is the sweep above (sweep_h200_t4_levers, sweep_h200_t4_graphs; solo ex/s includes compiling or recording, which fell "
             "in the solo window). ex/s counts every timed step; a graphs setup records each new batch shape "
             "(length grouping makes 5-6 in 20-40 steps, 8 in a whole epoch; ~1-1.5 s each), so its steady ex/s, "
             "over the steps whose shape had come before, is what later epochs run at. Run 9 times one whole "
             "epoch (157 steps of 64 from 10,003 rows) with no warm-up step left out: every recording counted, "
             "as a user pays it.", ""]
    for tag, result in current.items():
        env = result.get("env", {})
        lines.append(f"- {tag}: commit {env.get('commit')}, {env.get('gpu')}, torch {env.get('torch')}, "
                     f"transformers {env.get('transformers')}, peft {env.get('peft')}, bitsandbytes "
                     f"{env.get('bitsandbytes')}.")
    rows = speed_rows(current)
    lines += ["", "Each lever against `library_default` of the same run and model:", "",
              "| run | model | config | timed steps | shapes | ex/s | x library_default | steady ex/s | "
              "x library_default (steady) | peak GiB | status |", "|" + " --- |" * 11]
    for r in rows:
        base = next((b for b in rows if b["run"] == r["run"] and b["model"] == r["model"]
                     and b["config"] == "library_default" and b.get("examples_per_second")), None)
        eps, steady = r.get("examples_per_second"), r.get("steady_examples_per_second")
        ratio = f"{eps / base['examples_per_second']:.2f}x" if eps and base else "-"
        base_steady = base.get("steady_examples_per_second") if base else None
        steady_ratio = f"{steady / base_steady:.2f}x" if steady and base_steady else "-"
        lines.append(f"| {r['run']} | {r['model']} {r['method']} | {r['config']} | {r.get('timed_steps', 0)} | "
                     f"{r.get('distinct_shapes', '-')} | {_f(eps)} | {ratio} | {_f(steady)} | {steady_ratio} | "
                     f"{r['peak_gib']:.2f} | {r['status']} |")
    lines += [""] + speed_table(rows) + [""] + profile_table(rows) + graphs_check_table(results_dir)
    lines += unsloth_table(results_dir, rows)
    for transcript in sorted(results_dir.glob("run*_transcript.md")):
        lines += _demoted(transcript)
    return lines


def graphs_check_table(results_dir: Path) -> list[str]:
    """bench/graphs_check.py's records: the graphed stack's losses and gradients against the eager
    stack's on the same micro-batches, and the memory a graphs run left allocated once disabled."""
    found = [(p, json.loads(p.read_text())) for p in sorted(results_dir.glob("graphs_check_*.json"))]
    if not found:
        return []
    lines = ["### CUDA graphs against the eager stack (bench/graphs_check.py)", "",
             "The same micro-batches (two steps of three, two of one shape accumulated) trained eagerly and with "
             "graphs, from the same weights, under the T4 profile. Left allocated: GPU memory after "
             "graphs.disable minus after the eager run (what the next setup in the process starts with; "
             "negative: cuBLAS's workspaces are cleared too).", "",
             "| file | model | commit | transformers | max loss difference | max gradient difference (relative) | "
             "left allocated MiB |", "|" + " --- |" * 7]
    for path, r in found:
        left = r.get("allocated_bytes_left_by_graphs")
        lines.append(f"| {path.name} | {r['model']} | {r['commit']} | {r['versions'].get('transformers')} | "
                     f"{r['max_loss_difference']:.3g} | {r['max_relative_gradient_difference']:.3g} | "
                     f"{_f(left / 2**20 if left is not None else None, '{:.0f}')} |")
    return lines + [""]


def unsloth_table(results_dir: Path, rows: list[dict]) -> list[str]:
    """Unsloth's rows (bench/unsloth_row.py: same random 7B checkpoint, micro-batch, max_length and
    T4 profile), each against the 7B QLoRA `library_default` of the benchmark run at its commit."""
    found = [(p, json.loads(p.read_text())) for p in sorted(results_dir.glob("unsloth_*.json"))]
    if not found:
        return []
    lines = ["### Unsloth on the same shape (bench/unsloth_row.py)", "",
             "Unsloth's own loader, LoRA, kernels and checkpointing in a plain torch loop (paged 8-bit AdamW, fp16, "
             "allocator capped at 14.5 GiB), on the benchmark's random 7B checkpoint; against our default in a "
             "benchmark run of the same commit on the same machine.", "",
             "| file | commit | unsloth | transformers | micro-batch x max len | ex/s | peak GiB | our default ex/s "
             "(run) | x our default | status |", "|" + " --- |" * 10]
    for path, r in found:
        base = next((b for b in rows if b.get("commit") == r.get("commit") and b["model"] == "Qwen2.5-7B"
                     and b["method"] == "qlora" and b["config"] == "library_default"
                     and b.get("examples_per_second")), None)
        eps, versions = r.get("examples_per_s"), r.get("versions", {})
        ours = f"{base['examples_per_second']:.1f} ({base['run']})" if base else "-"
        ratio = f"{eps / base['examples_per_second']:.2f}x" if eps and base else "-"
        lines.append(f"| {path.name} | {r.get('commit', '-')} | {versions.get('unsloth')} | "
                     f"{versions.get('transformers')} | {r['args']['batch_size']} x {r['args']['max_length']} | "
                     f"{_f(eps)} | {_f(r.get('peak_memory_gib'), '{:.2f}')} | {ours} | {ratio} | {r['status']} |")
    return lines + [""]


def main(results_dir: Path = RESULTS, out_path: Path | None = None) -> str:
    runs = load_runs(results_dir)
    # runs that record their commit measured the code as committed then; runs 1-3 predate that record
    current = {tag: r for tag, r in runs.items() if r.get("env", {}).get("commit")}
    older = {tag: r for tag, r in runs.items() if tag not in current}
    env = next((r["env"] for r in older.values() if r.get("env", {}).get("gpu")), {})
    rates = [r["env"]["fp16_matmul_tflops"] for r in older.values() if r.get("env", {}).get("fp16_matmul_tflops")]
    rows = speed_rows(older)
    lines = ["# Benchmark summary (generated by bench/summarize.py from bench/results/)", "",
             "## Current code: defaults chosen on real weights", "",
             "Each method's defaults (qlora_helpers/defaults.py) were chosen by validation accuracy per second of "
             "training on real SmolLM2-135M weights (bench/sweep.py); one GPU against two through "
             "qlora_helpers.runners.train_all_gpus (bench/two_gpus.py); the notebooks themselves on one and two "
             "GPUs and 01 on Gemma 3 270M (bench/notebook_runs.py; the whole series' reference run is "
             "reference/smollm2-t4/). Raw JSON, logs and plots beside this file.", ""]
    generated_files = [*sorted(results_dir.glob("sweep_*.md")), *sorted(results_dir.glob("notebooks_*.md")),
                       *sorted(results_dir.glob("two_gpus_*.md")), *sorted(results_dir.glob("t4_estimate.md"))]
    for generated in generated_files:
        lines += _demoted(generated)
    if current:
        lines += step_cost_section(current, results_dir)
    lines += ["## Older code: throughput on random weights (runs 1-3, commit 9f1f602 and before)", "",
             "These rows measured the code before the defaults were chosen on real weights: the QLoRA default was "
             "then batch 128 at lr 2e-4 (a worse classifier on real weights, see above), and a rerun of "
             "`library_default` on 9f1f602 ran out of memory under the cap (13.52 GiB peak). Kept for the "
             "method and the memory estimator's calibration, not as a description of today's defaults.", "",
             f"Hardware: 1x {env.get('gpu')} ({env.get('sms')} SMs), torch {env.get('torch')}, transformers "
             f"{env.get('transformers')}, peft {env.get('peft')}, bitsandbytes {env.get('bitsandbytes')}. "
             "T4 profile: fp16 autocast (no bf16), PyTorch's allocator capped at 14.5 GiB (a T4's 15360 MiB less "
             "CUDA context), flash and cuDNN attention off (a T4 has neither: SDPA runs the memory-efficient kernel). "
             "Random-weight models of the real Qwen2.5 shapes, saved and loaded through "
             "`qlora_helpers.modeling.load_model`; random token ids with Banking77's token-length histogram "
             "(bench/banking77_token_lengths.json); trained through `qlora_helpers.training.build_trainer`.", "",
             "Throughput is over the timed steps after 2 warm-up steps (the profiled step and the one after it "
             "left out); a step is timed CUDA-synchronised end to end (data collation, forward, backward, "
             "unscale, clip, optimizer). MFU = model FLOPs / (time x the fp16 matmul rate measured in the same "
             f"run, 8192^3 products: {min(rates):.0f}-{max(rates):.0f} TFLOP/s; the datasheet's dense rate is 989). "
             "Model FLOPs per token: forward 2N, backward 4N for full fine-tuning, 2N (activation gradients "
             "only) + 6N_lora for a frozen base; attention 4·L·h per token and layer forward, twice that backward; "
             "N = decoder linear weights + head, computed on the padded tokens. HFU adds the forward that "
             "gradient checkpointing recomputes; useful MFU counts only real (non-padding) tokens.", "",
             "## Training speed and memory (T4 profile on the H200)", ""]
    lines += speed_table(rows) + [""] + profile_table(rows)

    # Footprints.
    shape = memory.QWEN2_5["7B"]
    floor = shape.linear_params // 2 + 2 * (shape.embedding_params + shape.head_params(77))
    lines += ["## 7B QLoRA footprint", ""]
    for tag, result in runs.items():
        load = result.get("loads", {}).get("Qwen2.5-7B:qlora")
        if load:
            lines.append(f"- {tag}: get_memory_footprint() {load['footprint_bytes']:,} B = "
                         f"{load['footprint_bytes'] / floor - 1:+.3%} vs the floor {floor:,} B (NF4 linear layers at "
                         f"0.5 B/weight + 16-bit embeddings and head; the rest is norms and q/k/v biases in 16-bit). "
                         f"Allocated after load_model (4-bit constants, fp32 LoRA + head copy): "
                         f"{load['allocated_after_bytes'] / 1e9:.3f} GB; load peak {load['load_peak_bytes'] / 1e9:.3f} GB; "
                         f"weights by dtype: {load['param_dtypes']}.")
        up = result.get("upcast")
        if up and up["load"]["footprint_bytes"] > 1e9:
            ul, ur = up["load"], up["run"]
            lines.append(f"- {tag}, upcast_all_to_fp32=True (peft's prepare_model_for_kbit_training): footprint with "
                         f"adapters {ul['footprint_after_adapters_bytes']:,} B, allocated after load "
                         f"{ul['allocated_after_bytes'] / 1e9:.3f} GB, load peak {ul['load_peak_bytes'] / 1e9:.3f} GB; "
                         f"training at batch {ur['batch_size']}: {ur['status']}"
                         + (f" ({ur.get('error', '')[:160]})" if ur['status'] != 'ok' else
                            f", peak {ur['peak_bytes'] / GIB:.2f} GiB") + f"; weights by dtype: {ul['param_dtypes']}.")
    lines.append("")

    est = estimator_rows(runs)
    if est:
        lines += ["## Estimator (qlora_helpers.memory.estimate) vs measured, fixed shape", "",
                  "Each cell trains 6 steps on batches of 16 x 64 tokens (one row in four shorter, so every batch "
                  "carries a padding mask) with the method's default optimizer and checkpointing (7B full: 8-bit "
                  "AdamW, as fp32 AdamW needs more than the card) and compares the allocator peak above the cell's "
                  "baseline with the prediction of the estimator as committed (its activation terms were calibrated "
                  "on the 0.5B probe of run 1, so the 1.5B and 7B cells are out of sample). A row's run says "
                  "which code measured it: runs 2-3 (older code) used lora_dropout 0.05, the default then; runs 5 and "
                  "later record their commit (listed under Step cost).", ""]
        for tag, why in set_aside_reasons(runs).items():
            cells = ", ".join(f"{r['model']} {r['method']} {r['measured_peak_bytes'] / GIB:.2f} GiB"
                              for r in runs[tag]["estimator"] if r.get("status") == "ok")
            lines.append(f"- Set aside: {tag} ({cells}), {why}.")
        lines += ["",
                  "| run | model | method | optimizer | ckpt | LoRA dropout | footprint meas GB | est GB | error | "
                  "peak meas GiB | est GiB | error |", "|" + " --- |" * 12]
        for r in est:
            lines.append(f"| {r['run']} | {r['model']} | {r['method']} | {r['optimizer']} | {'on' if r['gradient_checkpointing'] else 'off'} | "
                         f"{r.get('lora_dropout', 0.05 if r['method'] != 'full' else '-')} | "
                         f"{r['measured_footprint_bytes'] / 1e9:.3f} | {r['estimated_footprint_bytes'] / 1e9:.3f} | "
                         f"{r['footprint_error']:+.2%} | {r['measured_peak_bytes'] / GIB:.2f} | "
                         f"{r['estimated_peak_bytes'] / GIB:.2f} | {r['peak_error']:+.1%} |")
        lines.append("")
    text = "\n".join(lines) + "\n"
    Path(out_path or results_dir / "SUMMARY.md").write_text(text)
    return text


if __name__ == "__main__":
    print(main())
