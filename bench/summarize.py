"""Every table of the benchmark, generated from the results' JSON (no GPU): the one-vs-two-GPU and
notebook tables, and bench/results/SUMMARY.md, which gathers them with the runs' own tables.

Peaks are reported above what earlier cells of the same process left allocated: run 2 measured 0.5B
full and 1.5B LoRA after the 7B cell, which left 1.08 GiB allocated (fixed from run 3 on); those two
cells' peaks are corrected here by that baseline, which the JSON records as the load's
`allocated_before_bytes`.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

from qlora_helpers import memory

GIB = 2**30
REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
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


def _f(value, fmt="{:.1f}"):
    return "-" if value is None else fmt.format(value)


def _read(path: Path) -> dict:
    return json.loads(path.read_text())


def load_runs(folder: Path = RESULTS) -> dict[str, dict]:
    """Every run*.json by tag, in the order the runs were made (run 10 after run 9, not after run 1)."""
    paths = sorted(folder.glob("run*.json"), key=lambda p: (int(re.match(r"run(\d+)", p.stem).group(1)), p.stem))
    return {p.stem: _read(p) for p in paths}


def speed_rows(runs: dict[str, dict]) -> list[dict]:
    """Speed rows with their run, commit, peak in GiB and ratio to the same run's tutorial recipe (run 1,
    the pipeline check, left out: its timings include the profiler's teardown, fixed before run 2)."""
    rows = []
    for tag, result in runs.items():
        if tag.startswith("run1_"):
            continue
        tutorial = {r["method"]: r.get("examples_per_second") for r in result.get("speed", []) if r["config"] == "tutorial"}
        for r in result.get("speed", []):
            peak = r["peak_bytes"]
            if r.get("cell_baseline_bytes") is None:  # run 2: absolute peak; subtract what was allocated before the load
                peak -= result.get("loads", {}).get(f"{r['model']}:{r['method']}", {}).get("allocated_before_bytes", 0)
            eps = r.get("examples_per_second")
            rows.append({**r, "run": tag, "commit": result.get("env", {}).get("commit"), "peak_gib": peak / GIB,
                         "vs_tutorial": eps / tutorial[r["method"]] if eps and tutorial.get(r["method"]) else None})
    return rows


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


def profile_table(rows: list[dict]) -> list[str]:
    profiled = [r for r in rows if r.get("profile", {}).get("gpu_ops")]
    lines = ["### Where a step's time goes (torch.profiler, one step)", "",
             "| run | model | config | GPU ops per step | GPU busy ms | step wall ms (profiled) | GPU busy |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in profiled:
        p = r["profile"]
        lines.append(f"| {r['run'].split('_', 1)[0]} | {r['model']} {r['method']} | {r['config']} | {p['gpu_ops']:,} | "
                     f"{p['gpu_busy_ms']:.0f} | {p['profiled_step_wall_ms']:.0f} | "
                     f"{p['gpu_busy_ms'] / p['profiled_step_wall_ms']:.0%} |")
    return lines + [""] if profiled else []


def estimator_table(rows: list[dict]) -> list[str]:
    lines = ["| run | model | method | optimizer | ckpt | LoRA dropout | footprint meas GB | est GB | error | "
             "peak meas GiB | est GiB | error |", "|" + " --- |" * 12]
    for r in rows:
        lines.append(f"| {r['run']} | {r['model']} | {r['method']} | {r['optimizer']} | "
                     f"{'on' if r['gradient_checkpointing'] else 'off'} | {r['lora_dropout']} | "
                     f"{r['measured_footprint_bytes'] / 1e9:.3f} | {r['estimated_footprint_bytes'] / 1e9:.3f} | "
                     f"{r['footprint_error']:+.2%} | {r['measured_peak_bytes'] / GIB:.2f} | "
                     f"{r['estimated_peak_bytes'] / GIB:.2f} | {_f(r['peak_error'], '{:+.1%}')} |")
    return lines + [""]


def leftover_bytes(result: dict) -> int:
    """The most memory (bytes) a speed setup of a run started with above the first setup of the same
    model: what earlier setups left allocated (run 8: the CUDA graphs of 54f5065, fixed in fd55589)."""
    first: dict[str, int] = {}
    worst = 0
    for r in result.get("speed", []):
        if (start := r.get("start_allocated_bytes")) is not None:
            worst = max(worst, start - first.setdefault(r["model"], start))
    return worst


def set_aside_reasons(runs: dict[str, dict]) -> dict[str, str]:
    """Runs whose estimator cells are left out of the table, each with why: they measured memory an
    earlier setup left behind, or something else (MISMEASURED_ESTIMATOR_RUNS)."""
    reasons = {tag: f"measured after a setup that left {left / 2**20:.0f} MiB allocated into the next one (see "
                    "\"CUDA graphs against the eager stack\" above)" for tag, result in runs.items()
               if result.get("estimator") and (left := leftover_bytes(result)) > LEFTOVER_LIMIT}
    return {**reasons, **{tag: why for tag, why in MISMEASURED_ESTIMATOR_RUNS.items() if tag in runs}}


def estimator_rows(runs: dict[str, dict]) -> list[dict]:
    """One measured row per model x method (the latest run's; run 1's cells were the calibration run,
    and runs in `set_aside_reasons` measured something else), with the estimator's prediction as it is now."""
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
        rows.append({**r, "lora_dropout": dropout,
                     "estimated_footprint_bytes": est.footprint_bytes, "estimated_peak_bytes": est.peak_bytes,
                     "footprint_error": est.footprint_bytes / r["measured_footprint_bytes"] - 1,
                     "peak_error": est.peak_bytes / r["measured_peak_bytes"] - 1})
    return rows


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
                     and b["config"] == "library_default" and b.get("examples_per_second")), {})
        eps, steady, base_steady = (r.get("examples_per_second"), r.get("steady_examples_per_second"),
                                    base.get("steady_examples_per_second"))
        ratio = f"{eps / base['examples_per_second']:.2f}x" if eps and base else "-"
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
    """graphs_check.py's records: the graphed stack's losses and gradients against the eager stack's on
    the same micro-batches, and the memory a graphs run left allocated once disabled."""
    lines = ["### CUDA graphs against the eager stack (bench/graphs_check.py)", "",
             "The same micro-batches (two steps of three, two of one shape accumulated) trained eagerly and with "
             "graphs, from the same weights, under the T4 profile. Left allocated: GPU memory after "
             "graphs.disable minus after the eager run (what the next setup in the process starts with; "
             "negative: cuBLAS's workspaces are cleared too).", "",
             "| file | model | commit | transformers | max loss difference | max gradient difference (relative) | "
             "left allocated MiB |", "|" + " --- |" * 7]
    for path in sorted(results_dir.glob("graphs_check_*.json")):
        r = _read(path)
        left = r.get("allocated_bytes_left_by_graphs")
        lines.append(f"| {path.name} | {r['model']} | {r['commit']} | {r['versions'].get('transformers')} | "
                     f"{r['max_loss_difference']:.3g} | {r['max_relative_gradient_difference']:.3g} | "
                     f"{_f(left / 2**20 if left is not None else None, '{:.0f}')} |")
    return lines + [""]


def unsloth_table(results_dir: Path, rows: list[dict]) -> list[str]:
    """Unsloth's rows (same random 7B checkpoint, micro-batch, max_length and T4 profile), each against
    the 7B QLoRA `library_default` of the benchmark run at its commit."""
    lines = ["### Unsloth on the same shape (bench/unsloth_row.py, as of commit 4a53963)", "",
             "Unsloth's own loader, LoRA, kernels and checkpointing in a plain torch loop (paged 8-bit AdamW, fp16, "
             "allocator capped at 14.5 GiB), on the benchmark's random 7B checkpoint; against our default in a "
             "benchmark run of the same commit on the same machine.", "",
             "| file | commit | unsloth | transformers | micro-batch x max len | ex/s | peak GiB | our default ex/s "
             "(run) | x our default | status |", "|" + " --- |" * 10]
    for path in sorted(results_dir.glob("unsloth_*.json")):
        r = _read(path)
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


def two_gpus_markdown(report: dict) -> str:
    """two_gpus.py's report: what ran, then per part each run against the part's one-GPU run. A run
    that did not run as asked (status other than ok) shows its status and no speed-up, nor serves as
    the one-GPU baseline."""
    knobs, versions = report.get("notebook_knobs", {}), report.get("versions", {})
    ran = {part: [r for r in report[part].values() if "examples" in r] for part in ("speed", "accuracy")}
    about = [f"Each GPU emulating a T4 (fp16, allocator capped at 14.5 GiB); notebook 03's QLoRA knobs (effective "
             f"batch {knobs.get('batch_size', '?')} x {knobs.get('gradient_accumulation', '?')}, lr "
             f"{knobs.get('learning_rate', '?')}); on two GPUs each takes half of every batch."]
    if ran["speed"]:
        about.append(f"Speed: random weights of Qwen2.5-7B's shape, {ran['speed'][0]['examples']:,} examples trained "
                     "on, 1 epoch (their accuracy means nothing); in `2, batch x2` each GPU takes the one-GPU "
                     "micro-batch (the effective batch doubled).")
    if ran["accuracy"]:
        about.append(f"Accuracy: real SmolLM2-135M weights, {ran['accuracy'][0]['examples']:,} examples trained "
                     f"on over {knobs.get('epochs', '?')} epochs, the whole test set.")
    about.append("Libraries: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".")
    lines = [f"# One vs two GPUs ({report['tag']}, commit {report['commit']})", "", " ".join(about), "",
             "| part | GPUs asked | GPUs used | per-GPU batch | examples/s | speed-up | train s | steps | "
             "peak GiB/GPU | test acc | macro-F1 | status |", "|" + " --- |" * 12]
    for part in ("speed", "accuracy"):
        one = report[part].get("1", {})
        one_eps = one.get("examples_per_second") if one.get("status") == "ok" else None
        for n, r in sorted(report[part].items()):
            if "examples_per_second" not in r:
                lines.append(f"| {part} | {n} | | | | | | | | | | {r['status']} |")
                continue
            speedup = f"{r['examples_per_second'] / one_eps:.2f}x" if one_eps and r["status"] == "ok" else "-"
            lines.append(f"| {part} | {n} | {r.get('processes', '?')} | {r['per_gpu_batch']} | "
                         f"{r['examples_per_second']:.1f} | {speedup} | {r['train_seconds']:.0f} | {r['steps']} | "
                         f"{r['peak_memory_gib']:.2f} | {r['accuracy']:.2%} | {r['macro_f1']:.3f} | {r['status']} |")
    return "\n".join(lines) + "\n"


def notebook_row(name: str, r: dict) -> str:
    """One notebook run's results.json as a table row."""
    t, losses = r["training"], r["training"]["losses"]
    return (f"| {name} | {r['model_id']} | {r['method']} | {r['compute_dtype']} | "
            f"{t.get('processes', 1)} x {t['batch_size']} x {t['gradient_accumulation']} | "
            f"{t['examples_per_second']:.1f} | {t['train_seconds']:.0f} | {t['peak_memory_bytes'] / 2**30:.2f} | "
            f"{losses[0]:.2f} -> {losses[-1]:.2f} ({'yes' if all(math.isfinite(x) for x in losses) else 'no'}) | "
            f"{r['metrics']['accuracy']:.2%} | {r['metrics']['macro_f1']:.3f} | {r['commit']} |")


def notebooks_markdown(tag: str, results_dir: Path = RESULTS) -> str:
    """notebooks_<tag>.md from the lease's results.json files in notebooks_<tag>/ (bench/lease_jobs.sh):
    notebook 03 with cuda_graphs on against off (graphs_03.json, eager_03.json), or 03 on one GPU (the
    reference run) against both GPUs, and 01 on Gemma 3 270M under the T4 profile."""
    folder = results_dir / f"notebooks_{tag}"
    header = ["| run | model | method | compute | GPUs x batch x accum | examples/s | train s | peak GiB/GPU | "
              "loss first -> last (all finite) | test accuracy | macro-F1 | commit |", "|" + " --- |" * 12]
    if (folder / "graphs_03.json").exists():
        graphs, eager = _read(folder / "graphs_03.json"), _read(folder / "eager_03.json")
        hw, versions = graphs["hardware"], graphs["versions"]
        speedup = graphs["training"]["examples_per_second"] / eager["training"]["examples_per_second"]
        return "\n".join([
            f"# Notebook 03 with CUDA graphs on {hw['count']}x {hw['name']}, emulating a {hw['emulating'].upper()}", "",
            "Libraries: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v) + ". Notebook 03's steps "
            "as its cells call them (`experiment.load_data` to `save_results`, in one process: bench/lease_jobs.sh "
            "notebook-graphs) with the smollm2-t4 profile's parameters and `cuda_graphs` on, then off: real "
            "SmolLM2-135M weights, full Banking77 (10,003 training rows x 2 epochs, 3,080 test rows), one after "
            "the other on one GPU. examples/s and train s count the whole training, each batch shape's "
            "recording included.", "",
            *header, notebook_row("03, cuda_graphs=True", graphs), notebook_row("03, cuda_graphs=False (the default)", eager), "",
            f"CUDA graphs against the default through the notebook: {speedup:.2f}x the examples/s, "
            f"{100 * (graphs['metrics']['accuracy'] - eager['metrics']['accuracy']):+.2f} points of test accuracy "
            f"(one seed each), peak memory {graphs['training']['peak_memory_bytes'] / 2**30:.2f} against "
            f"{eager['training']['peak_memory_bytes'] / 2**30:.2f} GiB.", ""])
    one = _read(REPO / "reference" / "smollm2-t4" / "03_qlora_qwen2.5_7b" / "results.json")
    two, gemma = _read(folder / "two_gpus_03.json"), _read(folder / "gemma_01.json")
    hw, versions = two["hardware"], two["versions"]
    return "\n".join([
        f"# Notebooks on {hw['count']}x {hw['name']}, each emulating a {hw['emulating'].upper()} ({tag})", "",
        "Libraries: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v) + ". Full Banking77 "
        "(10,003 training rows x 2 epochs, 3,080 test rows), each notebook through "
        "`python -m qlora_helpers.runners.run` (bench/lease_jobs.sh). GPUs x micro-batch x accumulation: "
        "the effective batch is the product.", "",
        *header, notebook_row("03, one GPU (reference run)", one),
        notebook_row("03, both GPUs (training cell on all GPUs)", two), notebook_row("01 on Gemma 3 270M", gemma), "",
        f"Two GPUs against one through the notebook: {two['training']['examples_per_second'] / one['training']['examples_per_second']:.2f}x "
        f"the examples/s, {100 * (two['metrics']['accuracy'] - one['metrics']['accuracy']):+.2f} points of "
        "test accuracy at the same effective batch. Each GPU takes half of every batch, so a small "
        "model whose step time is set by kernel launches, not by the batch, gains little; see "
        "two_gpus_*.md for the 7B's shape.", ""])


def main(results_dir: Path = RESULTS, out_path: Path | None = None) -> str:
    """Rebuild notebooks_*.md, then SUMMARY.md from every table; return SUMMARY.md's text."""
    for folder in sorted(p for p in results_dir.glob("notebooks_*") if p.is_dir()):
        (results_dir / f"{folder.name}.md").write_text(notebooks_markdown(folder.name[len("notebooks_"):], results_dir))
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
             "GPUs and 01 on Gemma 3 270M (bench/summarize.py's notebook tables; the whole series' reference run is "
             "reference/smollm2-t4/). Raw JSON, logs and plots beside this file.", ""]
    for generated in [*sorted(results_dir.glob("sweep_*.md")), *sorted(results_dir.glob("notebooks_*.md")),
                      *sorted(results_dir.glob("two_gpus_*.md")), *sorted(results_dir.glob("t4_estimate.md"))]:
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

    shape = memory.QWEN2_5["7B"]
    floor = shape.linear_params // 2 + 2 * (shape.embedding_params + shape.head_params(77))
    lines += ["## 7B QLoRA footprint", ""]
    for tag, result in runs.items():
        if load := result.get("loads", {}).get("Qwen2.5-7B:qlora"):
            lines.append(f"- {tag}: get_memory_footprint() {load['footprint_bytes']:,} B = "
                         f"{load['footprint_bytes'] / floor - 1:+.3%} vs the floor {floor:,} B (NF4 linear layers at "
                         f"0.5 B/weight + 16-bit embeddings and head; the rest is norms and q/k/v biases in 16-bit). "
                         f"Allocated after load_model (4-bit constants, fp32 LoRA + head copy): "
                         f"{load['allocated_after_bytes'] / 1e9:.3f} GB; load peak {load['load_peak_bytes'] / 1e9:.3f} GB; "
                         f"weights by dtype: {load['param_dtypes']}.")
        up = result.get("upcast")  # runs 1 and 3 (older code): QLoRA loaded with upcast_all_to_fp32=True
        if up and up["load"]["footprint_bytes"] > 1e9:
            ul, ur = up["load"], up["run"]
            lines.append(f"- {tag}, upcast_all_to_fp32=True (peft's prepare_model_for_kbit_training): footprint with "
                         f"adapters {ul['footprint_after_adapters_bytes']:,} B, allocated after load "
                         f"{ul['allocated_after_bytes'] / 1e9:.3f} GB, load peak {ul['load_peak_bytes'] / 1e9:.3f} GB; "
                         f"training at batch {ur['batch_size']}: {ur['status']}"
                         + (f" ({ur.get('error', '')[:160]})" if ur['status'] != 'ok' else
                            f", peak {ur['peak_bytes'] / GIB:.2f} GiB") + f"; weights by dtype: {ul['param_dtypes']}.")
    lines.append("")
    if est := estimator_rows(runs):
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
        lines += [""] + estimator_table(est)
    text = "\n".join(lines) + "\n"
    Path(out_path or results_dir / "SUMMARY.md").write_text(text)
    return text
