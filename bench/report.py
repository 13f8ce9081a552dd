"""The benchmark's outputs: <tag>.json (every measurement, read by bench/summarize.py), <tag>.md
(the same as tables) and the examples/s ratios printed at the end of a run."""
from __future__ import annotations

import json
from pathlib import Path

from qlora_helpers import atomic, emulation
from qlora_helpers.memory import GIB


def write_results(out: str | Path, tag: str, results: dict) -> None:
    """Write `results` to out/<tag>.json and its tables to out/<tag>.md, each atomically."""
    atomic.write_text(Path(out) / f"{tag}.json", json.dumps(results, indent=1, default=str))
    atomic.write_text(Path(out) / f"{tag}.md", markdown(results))


def _f(value, fmt="{:.1f}"):
    return "-" if value is None else fmt.format(value)


def markdown(results: dict) -> str:
    env = results.get("env", {})
    lines = [f"# Benchmark `{results.get('tag')}`", "",
             f"Hardware: {env.get('gpu', 'CPU')}; torch {env.get('torch')}, transformers {env.get('transformers')}, "
             f"peft {env.get('peft')}, bitsandbytes {env.get('bitsandbytes')}. Profile: {results.get('profile')}"
             + (f" (fp16, allocator capped at {emulation.T4_USABLE_BYTES / GIB} GiB, no flash/cuDNN attention)" if results.get("profile") == "t4" else "")
             + f". fp16 matmul ceiling measured: {_f(env.get('fp16_matmul_tflops'))} TFLOP/s.", ""]
    speed = results.get("speed", [])
    if speed:
        lines += ["## Training speed and memory", "",
                  "| run | batch x accum | padding | ckpt | dropout | optimizer | ex/s | real tok/s | vs tutorial | "
                  "peak GiB | padding share | MFU | HFU | useful MFU | status |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        tutorial = {r["method"]: r.get("examples_per_second") for r in speed if r["config"] == "tutorial"}
        for r in speed:
            eps = r.get("examples_per_second")
            ratio = eps / tutorial[r["method"]] if eps and tutorial.get(r["method"]) else None
            pad = "128 fixed" if r.get("fixed_padding") else f"dynamic /8, max {r['max_length']}"
            lines.append(
                f"| {r['model']} {r['config']} | {r['batch_size']} x {r['gradient_accumulation']} | {pad} | "
                f"{'on' if r['gradient_checkpointing'] else 'off'} | {r['lora_dropout'] if r['method'] != 'full' else '-'} | "
                f"{r['optimizer']} | {_f(eps)} | {_f(r.get('real_tokens_per_second'), '{:.0f}')} | "
                f"{_f(ratio, '{:.2f}x')} | {r['peak_bytes'] / GIB:.2f} | {_f(r.get('padding_share'), '{:.0%}')} | "
                f"{_f(r.get('mfu'), '{:.1%}')} | {_f(r.get('hfu'), '{:.1%}')} | {_f(r.get('useful_mfu'), '{:.1%}')} | "
                f"{r['status']} |")
        lines.append("")
        profiled = [r for r in speed if r.get("profile") and "gpu_ops" in r["profile"]]
        if profiled:
            lines += ["Profiled steps (one step each, torch.profiler):", "",
                      "| run | GPU ops per step | GPU busy ms | step ms (profiled) | GPU busy share |", "| --- | --- | --- | --- | --- |"]
            for r in profiled:
                p = r["profile"]
                lines.append(f"| {r['model']} {r['config']} | {p['gpu_ops']} | {p['gpu_busy_ms']} | "
                             f"{p['profiled_step_wall_ms']} | {p['gpu_busy_ms'] / p['profiled_step_wall_ms']:.0%} |")
            lines.append("")
    loads = results.get("loads", {})
    if loads:
        lines += ["## Loading", "", "| model:method | footprint GB | allocated after load GB | load peak GB | load s | "
                  "trainable params |", "| --- | --- | --- | --- | --- | --- |"]
        for key, info in loads.items():
            lines.append(f"| {key} | {info['footprint_bytes'] / 1e9:.3f} | {info['allocated_after_bytes'] / 1e9:.3f} | "
                         f"{info['load_peak_bytes'] / 1e9:.3f} | {info['load_seconds']} | {info['trainable_params']:,} |")
        lines.append("")
    up = results.get("upcast")
    if up:
        info, run = up["load"], up["run"]
        lines += ["## QLoRA with upcast_all_to_fp32=True", "",
                  f"footprint after adapters {info['footprint_after_adapters_bytes'] / 1e9:.3f} GB, allocated after load "
                  f"{info['allocated_after_bytes'] / 1e9:.3f} GB, training peak {run['peak_bytes'] / GIB:.2f} GiB, "
                  f"{_f(run.get('examples_per_second'))} ex/s; dtypes: {info['param_dtypes']}", ""]
    est = results.get("estimator", [])
    if est:
        lines += ["## Estimator (qlora_helpers.memory) vs measured", "",
                  "| model | method | batch x seq | optimizer | ckpt | footprint GB (meas / est / err) | "
                  "peak GiB (meas / est / err) |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for r in est:
            if r.get("status") == "error":
                lines.append(f"| {r['model']} | {r['method']} | error: {r.get('error', '')[:80]} | | | | |")
                continue
            lines.append(
                f"| {r['model']} | {r['method']} | {r['batch_size']} x {r['seq_len']} | {r['optimizer']} | "
                f"{'on' if r['gradient_checkpointing'] else 'off'} | {r['measured_footprint_bytes'] / 1e9:.3f} / "
                f"{r['estimated_footprint_bytes'] / 1e9:.3f} / {r['footprint_error']:+.2%} | "
                f"{r['measured_peak_bytes'] / GIB:.2f} / {r['estimated_peak_bytes'] / GIB:.2f} / "
                f"{_f(r.get('peak_error'), '{:+.1%}')} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def print_ratios(results: dict) -> None:
    speed = results.get("speed", [])
    tutorial = {r["method"]: r.get("examples_per_second") for r in speed if r["config"] == "tutorial"}
    print("\nexamples/s relative to the tutorial-like configuration (same run, same profile):")
    for r in speed:
        eps, base = r.get("examples_per_second"), tutorial.get(r["method"])
        ratio = f"{eps / base:.2f}x" if eps and base else "-"
        print(f"  {r['model']:>14} {r['config']:<28} {_f(eps):>8} ex/s  {ratio:>7}  peak {r['peak_bytes'] / GIB:6.2f} GiB"
              f"  MFU {_f(r.get('mfu'), '{:.1%}')}  {r['status']}")
    for r in results.get("estimator", []):
        if r.get("status") != "error":
            print(f"  estimator {r['model']:>14} {r['method']:<6} footprint {r['footprint_error']:+.2%}  "
                  f"peak {_f(r.get('peak_error'), '{:+.1%}')}")
