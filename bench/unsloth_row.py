#!/usr/bin/env python3
"""One comparison row: Unsloth QLoRA training speed and peak memory of a Qwen2.5 classifier.

Loads the Qwen2ForSequenceClassification checkpoint in --model (bench.workload.build_checkpoint
writes one) through Unsloth (`FastLanguageModel.from_pretrained(..., num_labels=77,
load_in_4bit=True)`: NF4, Unsloth's Qwen2 kernels), adds LoRA with `FastLanguageModel.get_peft_model`
(r 16, alpha 32, dropout 0, q/k/v/o/gate/up/down, use_gradient_checkpointing="unsloth"), and
trains on random token batches with Banking77's lengths (bench.workload.synthetic_dataset),
batch 64, length-grouped like the Trainer's group_by_length. Measures examples/s over the steps
after --warmup (CUDA synchronised around each step) and torch.cuda.max_memory_allocated; writes
JSON to --out, also on failure (status, stage, exact error), import failures included.

T4 emulation is done here by hand, as qlora_helpers.emulation does for QLORA_EMULATE_GPU=t4:
fp16 compute (dtype=torch.float16), allocator capped at 14.5 GiB, no flash / cuDNN SDPA, no TF32.

How it differs from bench/benchmark.py: a plain torch loop (autocast fp16 + GradScaler,
bitsandbytes PagedAdamW8bit at a constant lr 2e-3, no scheduler, no grad clipping) instead of
qlora_helpers.training's Trainer and collator; padding to a multiple of 8 within each batch;
Unsloth's own kernels, gradient checkpointing and fp32 upcast of the trainable weights. Speed is
the host GPU's (an H200), not a T4's. The checkpoint has random weights: the numbers say nothing
about accuracy, only that the loss is finite.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

PACKAGES = ("unsloth", "unsloth_zoo", "torch", "transformers", "peft", "bitsandbytes", "trl",
            "datasets", "accelerate", "triton", "xformers")
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
T4_USABLE_BYTES = int(14.5 * 2**30)
NUM_LABELS = 77


def versions() -> dict:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def offline_env(compile_dir: str) -> None:
    """No hub, no statistics ping, and Unsloth's generated modules outside the repo. Before import."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "UNSLOTH_DISABLE_STATISTICS"):
        os.environ.setdefault(var, "1")
    os.environ.setdefault("UNSLOTH_COMPILE_LOCATION", compile_dir)


def length_grouped_batches(lengths, batch_size: int, n_batches: int, seed: int) -> list[list[int]]:
    """Like transformers' LengthGroupedSampler: shuffle, cut into megabatches of 50 batches, sort each
    by length (longest first), cut into batches; longest batch first, the rest in shuffled order."""
    import numpy as np

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(lengths)).tolist()
    mega = 50 * batch_size
    batches = []
    for start in range(0, len(order), mega):
        chunk = sorted(order[start:start + mega], key=lambda i: -lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    longest = max(range(len(batches)), key=lambda b: max(lengths[i] for i in batches[b]))
    first = batches.pop(longest)
    rest = [batches[i] for i in rng.permutation(len(batches))]
    return ([first] + rest)[:n_batches]


def collate(rows, device, pad_id: int, multiple: int = 8):
    import torch

    width = max(len(r["input_ids"]) for r in rows)
    width = -(-width // multiple) * multiple
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r["input_ids"])] = torch.tensor(r["input_ids"])
        mask[i, :len(r["input_ids"])] = 1
    labels = torch.tensor([r["label"] for r in rows])
    return {k: v.to(device, non_blocking=True) for k, v in
            (("input_ids", ids), ("attention_mask", mask), ("labels", labels))}


def run(args, result: dict) -> None:
    import torch

    result["stage"] = "t4_profile"
    total = torch.cuda.get_device_properties(0).total_memory
    result["gpu"] = torch.cuda.get_device_name(0)
    torch.cuda.set_per_process_memory_fraction(min(1.0, T4_USABLE_BYTES / total), 0)
    torch.backends.cuda.enable_flash_sdp(False)
    if hasattr(torch.backends.cuda, "enable_cudnn_sdp"):
        torch.backends.cuda.enable_cudnn_sdp(False)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

    result["stage"] = "import_unsloth"
    import unsloth  # noqa: F401  (before transformers / peft, as Unsloth asks)
    from unsloth import FastLanguageModel
    import bitsandbytes as bnb

    from bench.workload import PAD_ID, synthetic_dataset

    result["stage"] = "load"
    model, _tokenizer = FastLanguageModel.from_pretrained(
        model_name=args.model, max_seq_length=args.max_length, dtype=torch.float16,
        load_in_4bit=True, num_labels=NUM_LABELS, local_files_only=True)
    result["load_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    result["model_class"] = type(model).__name__

    result["stage"] = "get_peft_model"
    model = FastLanguageModel.get_peft_model(
        model, r=16, lora_alpha=32, lora_dropout=0, bias="none", target_modules=TARGETS,
        use_gradient_checkpointing="unsloth", random_state=args.seed)
    FastLanguageModel.for_training(model)
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:  # GradScaler cannot unscale fp16 grads; Unsloth upcasts already, this makes sure
        if p.dtype != torch.float32:
            p.data = p.data.float()
    result["trainable_params"] = sum(p.numel() for p in params)
    result["peft_class"] = type(model).__name__

    result["stage"] = "data"
    vocab = model.config.vocab_size
    data = synthetic_dataset(args.rows, vocab, max_length=args.max_length, seed=args.seed)
    lengths = [len(r["input_ids"]) for r in data.rows]
    batches = length_grouped_batches(lengths, args.batch_size, args.steps, args.seed)

    result["stage"] = "train"
    optimizer = bnb.optim.PagedAdamW8bit(params, lr=args.lr)
    scaler = torch.amp.GradScaler("cuda")
    model.train()
    torch.cuda.reset_peak_memory_stats()
    step_s, losses, examples = [], [], 0
    for step, index in enumerate(batches):
        batch = collate([data.rows[i] for i in index], "cuda", PAD_ID)
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.float16):
            loss = model(**batch).loss
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        step_s.append(time.perf_counter() - start)
        losses.append(float(loss.detach()))
        if step >= args.warmup:
            examples += len(index)
    timed = sum(step_s[args.warmup:])
    result.update(
        status="ok", stage="done", steps=len(step_s), timed_steps=len(step_s) - args.warmup,
        examples_per_s=examples / timed if timed else None, step_seconds=step_s,
        peak_memory_gib=torch.cuda.max_memory_allocated() / 2**30, losses=losses,
        loss_finite=all(x == x and abs(x) != float("inf") for x in losses))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="folder with a Qwen2ForSequenceClassification checkpoint")
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--warmup", type=int, default=3, help="first steps left out of the timing")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--rows", type=int, default=10003, help="synthetic rows (Banking77's train size)")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compile-dir", default="/tmp/unsloth_compiled_cache",
                        help="UNSLOTH_COMPILE_LOCATION (Unsloth writes generated modules there)")
    args = parser.parse_args(argv)

    offline_env(args.compile_dir)
    from qlora_helpers.notebook.results import code_commit  # imports neither transformers nor peft: Unsloth first

    result = {"status": "error", "stage": "start", "api": "FastLanguageModel(num_labels=77)",
              "profile": "t4 (by hand)", "args": vars(args), "commit": code_commit()}
    try:
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("no CUDA device: Unsloth's 4-bit training needs one")
        run(args, result)
    except BaseException as error:  # noqa: BLE001 - record every failure, import errors included
        result["error"] = f"{type(error).__name__}: {error}"
        result["traceback"] = traceback.format_exc()[-6000:]
    finally:
        result["versions"] = versions()  # after the import, so a failed one shows what was there
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2, default=str))
        print(json.dumps({k: result.get(k) for k in ("status", "stage", "error", "examples_per_s",
                                                     "peak_memory_gib")}, default=str))
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
