#!/usr/bin/env python3
"""Benchmark full / LoRA / QLoRA training of Qwen2.5 classifiers: footprint, speed, memory, MFU.

Random-weight models of the real Qwen2.5 shapes (nothing can be downloaded) are saved to disk and
loaded back through `qlora_helpers.modeling.load_model`, so the real loading path
(BitsAndBytesConfig, NF4, double quant, adapters) is what gets measured; batches are random token
ids with Banking77's lengths (workload.py). Each training setup (config.py) runs through
`qlora_helpers.training.build_trainer`, the notebooks' Trainer, for a number of steps, timed and
measured step by step (runs.py, timing.py, device_memory.py); results go to <out>/<tag>.json and
.md (report.py), which bench/summarize.py reads.

Sections (--sections, run in the order given): listed at the end of --help (sections.py).

--profile t4 makes the H200 behave like a 16 GB T4 where that matters (qlora_helpers/emulation.py):
fp16 compute (no bf16), PyTorch's allocator capped at a T4's usable memory, and no flash / cuDNN
attention. Speed on an H200 is still an H200's.

--device cpu (what tests/test_bench.py runs) uses tiny shapes and a few steps: it checks the
pipeline end to end, not the numbers.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from bench import report  # noqa: E402
from bench.config import Options  # noqa: E402
from bench.device_memory import MemoryCap  # noqa: E402
from bench.runs import log  # noqa: E402
from bench.sections import SECTIONS, Session, __doc__ as SECTIONS_DOC  # noqa: E402
from qlora_helpers import emulation  # noqa: E402

# Options whose default depends on the device: (CPU mode, GPU).
DEVICE_DEFAULTS = {"steps": (4, 25), "warmup": (1, 3), "long_steps": (6, 200), "upcast_steps": (3, 15),
                   "rows": (400, 10003), "est_steps": (3, 6)}


def _names(text: str) -> list[str]:
    return [name for name in text.split(",") if name]


def parse_options(argv=None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__, epilog=SECTIONS_DOC,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--profile", choices=("t4", "native"), default="t4")
    parser.add_argument("--sections", default="env,speed,upcast,estimator", help=f"of {','.join(SECTIONS)}")
    parser.add_argument("--cells", default="", help="only these model:method cells, e.g. 7B:qlora,0.5B:full")
    parser.add_argument("--only-configs", default="", help="only these speed configs (names)")
    parser.add_argument("--probe-cells", default="", help="model:method cells for the probe section")
    parser.add_argument("--memory-snapshot", default="", help="speed configs (names) whose allocator history of "
                        "the first two steps is saved as <out>/<tag>_<model>_<config>.snapshot.pickle.gz (CUDA)")
    parser.add_argument("--upcast-model", default="7B")
    parser.add_argument("--build", default="", help="models to build (and time) in the build section, e.g. 1.5B,7B")
    for name in DEVICE_DEFAULTS:
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=None,
                            help="default: %d on CPU, %d on a GPU" % DEVICE_DEFAULTS[name])
    parser.add_argument("--est-batch", type=int, default=16)
    parser.add_argument("--est-seq", type=int, default=64)
    parser.add_argument("--out", default=str(REPO / "bench" / "results"))
    parser.add_argument("--tag", default=None, help="default: cpu_smoke on CPU, h200_<profile> on a GPU")
    parser.add_argument("--models-dir", default="/tmp/qlora_bench_models")
    parser.add_argument("--work-dir", default="/tmp/qlora_bench_runs")
    args = parser.parse_args(argv)
    sections = _names(args.sections)
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}: use some of {','.join(SECTIONS)}")
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    cpu = device == "cpu"
    per_device = {name: getattr(args, name) if getattr(args, name) is not None else values[0 if cpu else 1]
                  for name, values in DEVICE_DEFAULTS.items()}
    return Options(
        device=device, profile=args.profile, sections=sections, cells=_names(args.cells),
        only_configs=_names(args.only_configs), probe_cells=_names(args.probe_cells),
        memory_snapshot=_names(args.memory_snapshot),
        upcast_model=args.upcast_model, build=_names(args.build),
        est_batch=min(args.est_batch, 8) if cpu else args.est_batch,  # tiny shapes on CPU
        est_seq=min(args.est_seq, 32) if cpu else args.est_seq,
        out=args.out, tag=args.tag or ("cpu_smoke" if cpu else f"h200_{args.profile}"),
        models_dir=args.models_dir, work_dir=args.work_dir, **per_device)


def main(argv=None) -> dict:
    """Run the sections asked for; return the results (also written after every measurement)."""
    options = parse_options(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if options.cpu:
        torch.set_num_threads(1)  # tiny matrices: threads only add contention on a busy 2-core machine
    elif options.profile == "t4":
        os.environ[emulation.ENV_VAR] = "t4"  # fp16 compute (modeling.choose_compute_dtype); results name it
    else:
        os.environ.pop(emulation.ENV_VAR, None)
    cap = MemoryCap.for_profile("cpu" if options.cpu else options.profile)
    results = {"tag": options.tag, "profile": "cpu" if options.cpu else options.profile, "device": options.device,
               "args": asdict(options), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    session = Session(options, cap, results)
    for name in options.sections:
        start = time.perf_counter()
        try:
            SECTIONS[name](session)
        except Exception as error:  # a failed section is recorded; the next ones still run
            log(f"section {name} failed: {error!r}")
            traceback.print_exc()
            results.setdefault("errors", []).append({"section": name, "error": repr(error)[:1000]})
        results.setdefault("section_seconds", {})[name] = round(time.perf_counter() - start, 1)
        session.write()
    report.print_ratios(results)
    return results


if __name__ == "__main__":
    main()
