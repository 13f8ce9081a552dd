"""Each method's training defaults: the one place they are defined.

`training.default_train_config`, `modeling.load_model`, the notebooks' parameters
(`parameters.NotebookParameters`: a knob left None means the method's default), the runner's
profiles, the memory estimator and the benchmark all read them from here; a test checks the
notebooks' `parameters` cells against them.

How they were chosen (bench/results/sweep_h200x2_t4.md, bench/sweep.py): real SmolLM2-135M weights,
Banking77's training rows less a stratified 10% validation split, an H200 emulating a T4 (fp16,
14.5 GiB). Per method, the candidate that first reached the best validation accuracy (within 0.5
points) in the fewest seconds of training alone on the GPU:
- full: batch 32, lr 2e-4 reached 90.6% in 73 s (lr 2e-5 plateaued at 76%; the tutorial recipe,
  batch 8 padded to 128 tokens, reached 85.9% in 384 s);
- lora: batch 64, lr 2e-3 reached 90.5% in 74 s (lr 2e-4 at batch 32: 87.8% after 173 s);
- qlora: batch 64, lr 2e-3 reached 89.7% in 148 s (batch 128 at lr 2e-4, the former default, is far
  worse on real weights: too few optimizer steps at that rate).
These are a 135M model's optima. On the series' own Qwen2.5-1.5B, LoRA and QLoRA at 2e-3 fell to a loss
of ~1.4, climbed back to chance and went NaN (fp16 and bf16 alike), so the adapter methods' rate falls
with the model's size (`learning_rate`, applied where a notebook leaves learning_rate None).
"""
from __future__ import annotations

import math

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class MethodDefaults:
    learning_rate: float  # peak at REFERENCE_PARAMETERS (see learning_rate()); linear warm-up, then linear decay
    batch_size: int  # micro-batch: examples per forward on each device
    gradient_accumulation: int  # micro-batches per optimizer update (effective batch: the product)
    epochs: float
    optimizer: str  # a transformers `optim` name
    gradient_checkpointing: bool  # recompute activations in backward: less memory, ~30% more time
    warmup_ratio: float = 0.06
    weight_decay: float = 0.01
    max_length: int = 64  # tokens kept per utterance: Banking77's are short (95th percentile ~30)
    lora_r: int = 16  # rank of each LoRA update (ignored by full fine-tuning)
    lora_alpha: int = 32  # the update is scaled by lora_alpha / lora_r
    lora_dropout: float = 0.0  # on the LoRA input; 0.05 trained no better and costs time and memory

    @property
    def effective_batch(self) -> int:
        return self.batch_size * self.gradient_accumulation

    def as_dict(self) -> dict:
        return asdict(self)


DEFAULTS: dict[str, MethodDefaults] = {
    # torch's fused AdamW: the same update as "adamw_torch" in one kernel for all tensors, not a few per
    # tensor (2.62x against 2.16x with CUDA graphs alone on the 7B shape, bench/results/SUMMARY.md)
    "full": MethodDefaults(learning_rate=2e-4, batch_size=32, gradient_accumulation=1, epochs=2.0,
                           optimizer="adamw_torch_fused", gradient_checkpointing=False),
    "lora": MethodDefaults(learning_rate=2e-3, batch_size=64, gradient_accumulation=1, epochs=2.0,
                           optimizer="adamw_torch_fused", gradient_checkpointing=False),
    # the paged 8-bit AdamW keeps optimizer state off the GPU when memory runs short (falls back to
    # the unpaged one on CPU), run as one update call a step (flat_optimizer: 1.22x the 7B's examples/s,
    # the same update); checkpointing is what lets a 7B train in a T4's memory
    "qlora": MethodDefaults(learning_rate=2e-3, batch_size=64, gradient_accumulation=1, epochs=2.0,
                            optimizer="paged_adamw_8bit", gradient_checkpointing=True),
}
METHODS = tuple(DEFAULTS)
# QLoRA's 4-bit base (the compute dtype is the device's: modeling.choose_compute_dtype): NF4 levels
# for normally distributed weights, and the per-block scales quantized too (~0.37 bit a parameter less).
QUANTIZATION = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True}
# transformers >= 5.25 with the `kernels` package swaps layers for kernels it downloads from the hub
# (use_kernels defaults to on): offline (Kaggle with the internet off) that fails, and online it trains
# code we never tested. Every from_pretrained here passes use_kernels=HUB_KERNELS.
HUB_KERNELS = False
LORA_TARGET_MODULES = "all-linear"  # adapters on every linear layer of the base, not only attention
# Knobs a notebook may leave None to mean "the method's default"; learning_rate's depends on the model's
# size, so it is filled in once the model is loaded (learning_rate()).
NOTEBOOK_KNOBS = ("epochs", "batch_size", "gradient_accumulation", "learning_rate", "max_length", "lora_r",
                  "lora_alpha", "lora_dropout")
REFERENCE_PARAMETERS = 135_000_000  # SmolLM2-135M, where the rates above were chosen
SIZED_METHODS = ("lora", "qlora")  # full keeps its rate: 2e-4 held on SmolLM2-135M and Gemma 3 270M alike


def learning_rate(method: str, parameters: int) -> float:
    """The peak learning rate for `method` on a base model of `parameters` parameters.

    For LoRA and QLoRA the rate chosen on SmolLM2-135M, scaled by sqrt(135M / parameters) for larger
    models and never raised for smaller ones: 2e-3 at 135M, 1.04e-3 at Qwen2.5-0.5B (503M with its head), 5.9e-4
    at 1.5B, 2.7e-4 at 7B. The rule is the 1/sqrt(size) scaling often used for transformer learning rates, checked on
    real Qwen2.5 weights (bench/results/qwen_h100_t4.md). Full fine-tuning keeps its rate.
    ValueError for an unknown method or a non-positive size."""
    chosen = for_method(method).learning_rate
    if parameters <= 0:
        raise ValueError(f"a model of {parameters} parameters has no learning rate: count its parameters.")
    if method not in SIZED_METHODS:
        return chosen
    return chosen * min(1.0, math.sqrt(REFERENCE_PARAMETERS / parameters))


def learning_rate_rule(method: str) -> str:
    """learning_rate()'s rule for `method`, in words, for the notebooks' parameters table."""
    chosen = for_method(method).learning_rate
    if method not in SIZED_METHODS:
        return f"{chosen:g} ({method}'s default, any size)"
    return f"by size: {chosen:g} x sqrt(135M / N), at most {chosen:g}"


def for_method(method: str) -> MethodDefaults:
    """The defaults of `method` ("full", "lora" or "qlora"); ValueError naming the methods otherwise."""
    if method not in DEFAULTS:
        raise ValueError(f"unknown method {method!r}: use one of {', '.join(METHODS)}.")
    return DEFAULTS[method]
