"""Do the CUDA graphs of qlora_helpers/graphs.py compute what the eager decoder stack computes? (GPU)

Loads --model for QLoRA at the library defaults (under QLORA_EMULATE_GPU=t4: fp16, 14.5 GiB) and trains
the same micro-batches from the same weights twice, eagerly and with graphs: two optimizer steps of three
micro-batches (two of one shape accumulated into one gradient, the case graphs._unalias_gradients exists
for, then a third shape; the second step replays what the first recorded). Writes each micro-batch's
loss, the largest gradient difference per step relative to the largest eager gradient, and the memory
still allocated once graphs.disable has run against the eager run's, as JSON to --out.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from bench import timing
from bench.workload import synthetic_dataset
from qlora_helpers import graphs, modeling, training


def micro_batches(loaded, rows: int = 4096, batch: int = 32) -> list[list[dict]]:
    """Two steps of [shape A, shape A, shape B]: Banking77-length rows that pad to 16 (A) and 24 (B) tokens."""
    data = synthetic_dataset(rows, loaded.tokenizer.vocab_size, max_length=64, seed=1).rows
    short = [r for r in data if 9 <= len(r["input_ids"]) <= 16]
    middle = [r for r in data if 17 <= len(r["input_ids"]) <= 24]
    collate = training.LengthDroppingCollator(loaded.tokenizer, pad_to_multiple_of=8)
    a = [collate(short[i * batch:(i + 1) * batch]) for i in range(4)]
    b = [collate(middle[i * batch:(i + 1) * batch]) for i in range(2)]
    return [[a[0], a[1], b[0]], [a[2], a[3], b[1]]]


def train(loaded, steps: list[list[dict]], start: dict, *, with_graphs: bool) -> tuple[list[float], list[dict]]:
    """Forward and backward of every micro-batch under autocast (loss x 1024, as a GradScaler scales it);
    the gradients after each step, then zeroed. No optimizer: the weights stay put."""
    model = loaded.model
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in start:
                param.copy_(start[name])
    model.zero_grad(set_to_none=True)
    model.train()
    if with_graphs:
        graphs.enable(model)
    losses, grads = [], []
    try:
        for step in steps:
            for micro in step:
                with torch.autocast("cuda", dtype=loaded.compute_dtype):
                    loss = model(**{k: v.cuda() for k, v in micro.items()}).loss
                (loss * 1024).backward()
                losses.append(float(loss))
                # as the Trainer does: no autograd graph outlives its backward (a live one would tie the
                # weights' gradient accumulators to the eager stream, which a capture cannot wait on)
                del loss
            grads.append({n: p.grad.detach().float().clone() for n, p in model.named_parameters() if p.grad is not None})
            model.zero_grad(set_to_none=True)
    finally:
        graphs.disable(model)
    return losses, grads


def main(args) -> dict:
    loaded = modeling.load_model(args.model, "qlora", 77)
    start = {n: p.detach().clone() for n, p in loaded.model.named_parameters() if p.requires_grad}
    steps = micro_batches(loaded)
    eager_losses, eager_grads = train(loaded, steps, start, with_graphs=False)
    after_eager = timing.allocated()  # gradients zeroed, cuBLAS's workspace made
    graph_losses, graph_grads = train(loaded, steps, start, with_graphs=True)
    after_graphs = timing.allocated()  # after graphs.disable
    env = timing.environment()
    report = {"model": args.model, "compute_dtype": str(loaded.compute_dtype), "hardware": env.pop("hardware"),
              "commit": env.pop("commit"), "versions": env,
              "shapes": [[list(m["input_ids"].shape) for m in step] for step in steps],
              "eager_losses": eager_losses, "graph_losses": graph_losses,
              "max_loss_difference": max(abs(a - b) for a, b in zip(eager_losses, graph_losses)),
              "allocated_bytes_after_eager": after_eager, "allocated_bytes_after_graphs_disabled": after_graphs,
              "allocated_bytes_left_by_graphs": after_graphs - after_eager, "steps": []}
    for eager, graphed in zip(eager_grads, graph_grads):
        assert eager.keys() == graphed.keys(), "the graphs left different parameters with gradients"
        scale = max(float(g.abs().max()) for g in eager.values())
        diff = max(float((eager[n] - graphed[n]).abs().max()) for n in eager)
        report["steps"].append({"parameters_with_gradients": len(eager), "max_abs_gradient": scale,
                                "max_gradient_difference": diff, "relative": diff / scale})
    report["max_relative_gradient_difference"] = max(s["relative"] for s in report["steps"])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    return report
