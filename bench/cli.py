#!/usr/bin/env python3
"""The benchmark's one entry point, `python bench/cli.py COMMAND` (see --help): speed (speed.py; `--device cpu` is
the tiny pipeline check tests/test_bench.py runs), sweep (sweep.py), t4-estimate (t4_estimate.py) and summarize
(summarize.py: every table and results/SUMMARY.md from the results' JSON)."""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
RESULTS = str(REPO / "bench" / "results")
# speed options whose default depends on the device: (CPU, GPU)
DEVICE_DEFAULTS = {"steps": (4, 25), "warmup": (1, 3), "rows": (400, 10003), "est_steps": (3, 6)}


def names(text: str) -> list[str]:
    return [name for name in text.split(",") if name]


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = main.add_subparsers(dest="command", required=True)
    speed = commands.add_parser("speed", help="full / LoRA / QLoRA speed, memory, MFU and the estimator's error")
    speed.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    speed.add_argument("--profile", choices=("t4", "native"), default="t4",
                       help="t4: fp16, the allocator capped at 14.5 GiB, no flash / cuDNN attention (emulation.py)")
    speed.add_argument("--sections", type=names, default="env,speed", help="of env,speed,estimator (its --cells only)")
    speed.add_argument("--cells", type=names, default="", help="model:method cells, e.g. 7B:qlora,smollm2:qlora")
    speed.add_argument("--only-configs", type=names, default="", help="only these setups (speed.setups names)")
    for name, (cpu, gpu) in DEVICE_DEFAULTS.items():
        speed.add_argument("--" + name.replace("_", "-"), type=int, help=f"default: {cpu} on CPU, {gpu} on a GPU")
    speed.add_argument("--est-batch", type=int, default=16)
    speed.add_argument("--est-seq", type=int, default=64)
    speed.add_argument("--out", default=RESULTS)
    speed.add_argument("--tag", help="default: cpu_smoke on CPU, h200_<profile> on a GPU")
    speed.add_argument("--models-dir", default="/tmp/qlora_bench_models")
    speed.add_argument("--work-dir", default="/tmp/qlora_bench_runs")
    commands.add_parser("summarize", help="every table and results/SUMMARY.md from the results' JSON")
    commands.add_parser("sweep", help="defaults chosen by validation accuracy per second: run, report, choose",
                        add_help=False)
    commands.add_parser("t4-estimate", help="examples/s ceilings on a T4 from FLOPs alone")
    return main


def main(argv: list[str] | None = None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["sweep"]:  # its own sub-commands and options
        return importlib.import_module("bench.sweep").main(argv[1:])
    command_line = parser()
    args = command_line.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if args.command != "speed":
        return importlib.import_module("bench." + args.command.replace("-", "_")).main()
    if unknown := set(args.sections) - {"env", "speed", "estimator"}:
        command_line.error(f"unknown section(s) {', '.join(sorted(unknown))}: use env, speed, estimator")
    import torch

    cpu = args.device == "cpu" or (args.device == "auto" and not torch.cuda.is_available())
    args.device = "cpu" if cpu else "cuda"
    for name, (cpu_default, gpu_default) in DEVICE_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, cpu_default if cpu else gpu_default)
    args.est_batch, args.est_seq = (min(args.est_batch, 8), min(args.est_seq, 32)) if cpu else (args.est_batch, args.est_seq)
    args.tag = args.tag or ("cpu_smoke" if cpu else f"h200_{args.profile}")
    return importlib.import_module("bench.speed").main(args)


if __name__ == "__main__":
    main()
