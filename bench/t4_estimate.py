"""An estimate, not a measurement: each notebook's examples/s ceiling on a real T4, from the FLOPs of one epoch of
Banking77 (timing.step_flops on the training rows' Qwen2.5 token lengths) at a T4's 65 TFLOP/s fp16 peak. A real
step also waits on kernel launches, dequantization, memory traffic and the optimizer, which FLOPs do not count
(the H200 runs' MFU shows how far below peak): read the ratios, tutorial-like against default, more than the
numbers. Tutorial-like: micro-batch 8, random order, every row padded to 128 tokens. Default: the micro-batch
each notebook runs on a T4 (profile kaggle-t4, else defaults.py's), rows grouped as transformers'
LengthGroupedSampler does, each batch padded to its longest row rounded up to 8.

Kaggle's T4 x2 (`two_t4`): each T4 computes half of every step, then DDP all-reduces the trainable fp32 gradients
at NCCL_GBPS (PCIe Gen3 x16 is 15.75 GB/s a direction; without peer-to-peer access NCCL copies through host
memory, at about half), not overlapped with the backward (DDP overlaps some: the real gain can be higher).
`python bench/t4_estimate.py` writes results/t4_estimate.md."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.timing import step_flops  # noqa: E402
from bench.workload import MAIN_CELLS, banking77_lengths  # noqa: E402
from qlora_helpers import defaults  # noqa: E402
from qlora_helpers.memory import QWEN2_5  # noqa: E402
from qlora_helpers.runners.profiles import KAGGLE_T4, TRAINING_NOTEBOOKS  # noqa: E402

T4_FP16_TENSOR_FLOPS = 65e12  # NVIDIA T4 datasheet: 65 TFLOP/s mixed-precision (fp16 in, fp32 accumulate)
TUTORIAL = dict(batch_size=8, pad_to=128, grouped=False)
NCCL_GBPS = 8.0  # assumed all-reduce bandwidth between Kaggle's two T4s, GB/s (see the docstring)
MFU_ON_T4 = 0.35  # assumed share of the peak a real step reaches


def epoch_lengths(seed: int = 0) -> np.ndarray:
    """One epoch's token lengths in random order: every training row once (10,003 rows)."""
    lengths, counts = banking77_lengths()
    rows = np.repeat(lengths, counts.astype(int))
    return np.random.default_rng(seed).permutation(rows)


def batches(rows: np.ndarray, batch_size: int, *, pad_to: int | None, grouped: bool, seed: int = 0):
    """(batch, padded length, real tokens) per micro-batch, batched as the recipe does."""
    if grouped:  # transformers' LengthGroupedSampler: mega-batches of 50 batches, each sorted by length
        mega = 50 * batch_size
        rows = np.concatenate([np.sort(rows[i:i + mega])[::-1] for i in range(0, len(rows), mega)])
    out = []
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        length = pad_to or int(-(-chunk.max() // 8) * 8)
        out.append((len(chunk), length, int(chunk.sum())))
    return out


def estimate() -> list[dict]:
    rows = epoch_lengths()
    on_t4 = {knobs["method"]: knobs.get("batch_size") for knobs in map(KAGGLE_T4.parameters, TRAINING_NOTEBOOKS)}
    table = []
    for size, method in MAIN_CELLS:
        chosen = defaults.for_method(method)
        default = dict(batch_size=on_t4.get(method) or chosen.batch_size, pad_to=None, grouped=True)
        for recipe, knobs in (("tutorial-like", TUTORIAL), ("default", default)):
            steps = batches(rows, knobs["batch_size"], pad_to=knobs["pad_to"], grouped=knobs["grouped"])
            _, flops = step_flops(QWEN2_5[size], method, steps, checkpointing=chosen.gradient_checkpointing,
                                  lora_r=chosen.lora_r)
            table.append({"model": QWEN2_5[size].name, "method": method, "recipe": recipe,
                          "batch": knobs["batch_size"], "padded_tokens": sum(b * l for b, l, _ in steps),
                          "real_tokens": sum(r for _, _, r in steps),
                          "tflop_per_example": flops / len(rows) / 1e12,
                          "ceiling_examples_per_s": T4_FP16_TENSOR_FLOPS * len(rows) / flops})
    return table


def two_t4(table: list[dict]) -> list[dict]:
    """Expected speed-up of two T4s over one for notebooks 02 and 03 at their default recipe: per optimizer
    step of the notebook's effective batch, half the compute plus one all-reduce of the trainable gradients."""
    rows = []
    for row in table:
        if row["recipe"] != "default" or row["method"] == "full":
            continue
        shape = next(s for s in QWEN2_5.values() if s.name == row["model"])
        chosen = defaults.for_method(row["method"])
        gradient_bytes = 4 * (shape.lora_params(chosen.lora_r) + shape.head_params(77))
        allreduce = gradient_bytes / (NCCL_GBPS * 1e9)  # 2 GPUs in a ring: each sends and gets it once
        out = {"model": row["model"], "method": row["method"], "gradient_mb": gradient_bytes / 1e6,
               "allreduce_ms": allreduce * 1e3}
        for mfu in (1.0, MFU_ON_T4):
            one = chosen.effective_batch * row["tflop_per_example"] * 1e12 / (T4_FP16_TENSOR_FLOPS * mfu)
            out[f"speedup_at_{mfu:g}"] = one / (one / 2 + allreduce)
        rows.append(out)
    return rows


def main() -> str:
    table = estimate()
    lines = ["# T4 estimate (not measured): examples/s ceiling at a T4's 65 TFLOP/s fp16 peak", "",
             "Generated by bench/t4_estimate.py from one epoch of Banking77's 10,003 training rows (Qwen2.5 "
             "token lengths). FLOPs per example include the recomputed forward of gradient checkpointing where "
             "the method uses it. A ceiling: a real T4 runs at a fraction of its peak.", "",
             "| model | method | recipe | micro-batch | padded / real tokens | TFLOP per example | ceiling examples/s | default vs tutorial-like |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in table:
        pair = [r for r in table if r["model"] == row["model"]]
        ratio = (f"{pair[1]['ceiling_examples_per_s'] / pair[0]['ceiling_examples_per_s']:.1f}x"
                 if row["recipe"] == "default" else "")
        lines.append(f"| {row['model']} | {row['method']} | {row['recipe']} | {row['batch']} | "
                     f"{row['padded_tokens'] / row['real_tokens']:.2f} | {row['tflop_per_example']:.3f} | "
                     f"{row['ceiling_examples_per_s']:.0f} | {ratio} |")
    lines += ["", f"## Two T4s (Kaggle's GPU T4 x2), an estimate: all-reduce at an assumed {NCCL_GBPS:g} GB/s over PCIe",
              "", "Per optimizer step of the effective batch (64): one T4's compute against half of it plus one "
              "all-reduce of the trainable fp32 gradients (bench/t4_estimate.py, `two_t4`).", "",
              f"| model | method | gradients (MB) | all-reduce (ms) | speed-up at peak | speed-up at {MFU_ON_T4:.0%} of peak |",
              "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['model']} | {r['method']} | {r['gradient_mb']:.0f} | {r['allreduce_ms']:.1f} | "
              f"{r['speedup_at_1']:.2f}x | {r[f'speedup_at_{MFU_ON_T4:g}']:.2f}x |" for r in two_t4(table)]
    text = "\n".join(lines) + "\n"
    (Path(__file__).parent / "results" / "t4_estimate.md").write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
