#!/usr/bin/env python3
"""One comparison row, not the library's code path: Unsloth's QLoRA (FastLanguageModel, NF4, 77 labels; LoRA at the
QLoRA defaults' r, alpha and dropout, its own checkpointing) on `bench/cli.py speed`'s random 7B checkpoint (built
into --models-dir if missing) at the defaults' micro-batch and length, emulating a T4 (fp16, 14.5 GiB), trained by
a plain torch loop (autocast, GradScaler, PagedAdamW8bit, length-grouped batches padded to a multiple of 8).
Writes examples/s, peak GiB, commit, versions and status to --out, on failure too. In Unsloth's own environment
(transformers <= 5.17), after `. bench/lease_setup.sh`: `PYTHONPATH=/tmp/site_unsloth:$PWD python3
bench/unsloth_row.py --out OUT.json`. bench.timing and .workload load no transformers or peft before Unsloth does."""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback
from importlib import metadata
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import timing  # noqa: E402
from bench.workload import NUM_LABELS, PAD_ID, build_checkpoint, synthetic_dataset  # noqa: E402
from qlora_helpers import atomic, defaults, emulation, memory  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
EXTRA_PACKAGES = ("unsloth", "unsloth_zoo", "trl", "triton", "xformers", "torchao")
QLORA = defaults.DEFAULTS["qlora"]


def run(args, result: dict) -> None:
    result["stage"], result["imported_before_unsloth"] = "import_unsloth", [
        name for name in ("transformers", "peft", "trl") if name in sys.modules]
    import unsloth  # noqa: F401  (before transformers and peft, as Unsloth asks)
    from unsloth import FastLanguageModel
    import bitsandbytes as bnb
    from transformers.trainer_pt_utils import get_length_grouped_indices

    result["stage"] = "build"  # uncapped, as speed.py builds it
    folder = build_checkpoint(memory.QWEN2_5["7B"], Path(args.models_dir) / memory.QWEN2_5["7B"].name, "cuda")
    timing.free()
    result["stage"], result["t4_cap_bytes"] = "load", emulation.apply_t4_profile(0)
    timing.reset_peak()
    model, _ = FastLanguageModel.from_pretrained(
        model_name=str(folder), max_seq_length=args.max_length, dtype=torch.float16, load_in_4bit=True,
        num_labels=NUM_LABELS, local_files_only=True)
    result.update(stage="get_peft_model", load_peak_gib=torch.cuda.max_memory_allocated() / 2**30,
                  model_class=type(model).__name__)
    model = FastLanguageModel.get_peft_model(
        model, r=QLORA.lora_r, lora_alpha=QLORA.lora_alpha, lora_dropout=QLORA.lora_dropout, bias="none",
        target_modules=TARGETS, use_gradient_checkpointing="unsloth", random_state=args.seed)
    FastLanguageModel.for_training(model)
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:  # GradScaler cannot unscale fp16 gradients; Unsloth upcasts already, this makes sure
        p.data = p.data.float()
    result.update(stage="train", trainable_params=sum(p.numel() for p in params))
    rows = synthetic_dataset(args.rows, model.config.vocab_size, max_length=args.max_length, seed=args.seed)
    order = get_length_grouped_indices([len(r["input_ids"]) for r in rows], args.batch_size,
                                       generator=torch.Generator().manual_seed(args.seed))
    batches = [order[i:i + args.batch_size] for i in range(0, len(order), args.batch_size)][:args.steps]
    optimizer, scaler = bnb.optim.PagedAdamW8bit(params, lr=args.lr), torch.amp.GradScaler("cuda")
    model.train()
    timing.reset_peak()
    step_s, losses = [], []
    for index in batches:
        width = -(-max(len(rows[i]["input_ids"]) for i in index) // 8) * 8  # the Trainer's pad_to_multiple_of
        ids = torch.tensor([rows[i]["input_ids"] + [PAD_ID] * (width - len(rows[i]["input_ids"])) for i in index])
        labels = torch.tensor([rows[i]["label"] for i in index])
        timing.sync()
        start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.float16):
            loss = model(input_ids=ids.cuda(), attention_mask=(ids != PAD_ID).long().cuda(), labels=labels.cuda()).loss
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        timing.sync()
        step_s.append(time.perf_counter() - start)
        losses.append(float(loss.detach()))
    timed = sum(step_s[args.warmup:])
    result.update(status="ok", stage="done", steps=len(step_s), timed_steps=len(step_s[args.warmup:]),
                  examples_per_s=sum(map(len, batches[args.warmup:])) / timed if timed else None, step_seconds=step_s,
                  peak_memory_gib=torch.cuda.max_memory_allocated() / 2**30, losses=losses,
                  loss_finite=all(math.isfinite(x) for x in losses))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--models-dir", default="/tmp/qlora_bench_models", help="as `bench/cli.py speed`'s")
    for name, default in (("steps", 25), ("warmup", 3), ("batch-size", QLORA.batch_size),
                          ("max-length", QLORA.max_length), ("rows", 10003), ("lr", QLORA.learning_rate), ("seed", 0)):
        parser.add_argument("--" + name, type=type(default), default=default)
    parser.add_argument("--compile-dir", default="/tmp/unsloth_compiled_cache", help="UNSLOTH_COMPILE_LOCATION")
    args = parser.parse_args(argv)
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "UNSLOTH_DISABLE_STATISTICS"):
        os.environ.setdefault(var, "1")
    os.environ.setdefault("UNSLOTH_COMPILE_LOCATION", args.compile_dir)
    os.environ[emulation.ENV_VAR] = "t4"  # what the results record; run() applies the cap and fp16 itself
    result = {"status": "error", "stage": "start", "api": "FastLanguageModel", "profile": "t4", "args": vars(args)}
    try:
        env = timing.environment()  # commit ($QLORA_COMMIT), library versions and machine, before anything can fail
        result.update(commit=env.pop("commit"), hardware=env.pop("hardware"), versions=env)
        installed = {d.metadata["Name"].lower().replace("-", "_"): d.version  # the first on sys.path wins
                     for d in reversed(list(metadata.distributions()))}
        env.update({name: installed.get(name) for name in EXTRA_PACKAGES})
        run(args, result)
    except BaseException as error:  # noqa: BLE001 - a row that failed still says why, import errors included
        result.update(error=f"{type(error).__name__}: {error}", traceback=traceback.format_exc()[-6000:])
    finally:
        atomic.write_text(args.out, json.dumps(result, indent=2, default=str))
        print(json.dumps({k: result.get(k) for k in ("status", "stage", "error", "examples_per_s", "peak_memory_gib")}))
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
