"""Train with the Hugging Face Trainer, measuring what the comparison needs.

Measured per run: examples/s, real (non-padding) tokens/s, the padding share of the batches, wall
time, and peak memory (CUDA allocator peak on GPU, process peak RSS on CPU). Batches are padded
to their own longest row (rounded to a multiple of 8) and grouped by length, which on Banking77
removes most of the padding that fixed 128-token batches carry.
"""
from __future__ import annotations

import gc
import math
import resource
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments, set_seed
from transformers.trainer_utils import get_last_checkpoint

from .distributed import sum_across_processes
from .modeling import LoadedModel


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf: training on would only produce a useless model."""


class OutOfMemoryAdvice(RuntimeError):
    """CUDA ran out of memory: the message says which knob to turn."""


@dataclass
class TrainConfig:
    output_dir: str = "runs/demo/model"
    epochs: float = 2.0
    batch_size: int = 32
    gradient_accumulation: int = 1
    learning_rate: float = 2e-4
    warmup_ratio: float = 0.06
    weight_decay: float = 0.01
    max_length: int = 128
    optimizer: str = "adamw_torch"
    seed: int = 42
    group_by_length: bool = True
    pad_to_multiple_of: int = 8
    logging_steps: int = 20
    save_steps: int = 200
    max_steps: int = -1  # > 0 overrides epochs (benchmarks, smoke runs)
    retry_on_oom: bool = True  # on CUDA OOM: halve batch_size, double gradient_accumulation, retry


def default_train_config(method: str, **overrides) -> TrainConfig:
    """Defaults that are fast and fit a 16 GB T4: dynamic padding, length grouping, batch 32, and
    for QLoRA the paged 8-bit AdamW (it falls back to the unpaged one on CPU) and batch 128.

    A QLoRA step of a 7B model issues ~12k GPU operations and costs ~0.6 s whatever the batch
    (bench/results: batch 32 and 128 step alike on an H200), so a large micro-batch is what makes
    it fast; with checkpointing, batch 128 of Banking77 peaks at 10.7 GiB (T4-capped H200)."""
    per_method = {
        "full": dict(learning_rate=5e-5, optimizer="adamw_torch"),
        "lora": dict(learning_rate=2e-4, optimizer="adamw_torch"),
        "qlora": dict(learning_rate=2e-4, optimizer="paged_adamw_8bit", batch_size=128),
    }
    return TrainConfig(**{**per_method[method], **overrides})


@dataclass
class TrainStats:
    train_seconds: float
    steps: int
    examples: int
    real_tokens: int
    padded_tokens: int
    peak_memory_bytes: int
    peak_memory_kind: str  # "cuda_max_allocated" or "process_peak_rss"
    final_loss: float
    losses: list[float] = field(default_factory=list)  # the mean loss over each logging interval
    # training examples seen when each of `losses` was logged: epoch x training rows, so runs with
    # other batch sizes or logging intervals share one axis (exact at epoch ends, within a batch between)
    loss_examples_seen: list[int] | None = None  # None: not recorded (results from before it existed)

    @property
    def examples_per_second(self) -> float:
        return self.examples / self.train_seconds if self.train_seconds else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.real_tokens / self.train_seconds if self.train_seconds else 0.0

    @property
    def padding_share(self) -> float:
        return 1 - self.real_tokens / self.padded_tokens if self.padded_tokens else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "examples_per_second": self.examples_per_second,
                "tokens_per_second": self.tokens_per_second, "padding_share": self.padding_share}


class LengthDroppingCollator(DataCollatorWithPadding):
    """Pads each batch to its longest row (rounded up to a multiple of 8 for tensor cores)."""

    def __call__(self, features):
        return super().__call__([{k: v for k, v in f.items() if k != "length"} for f in features])


class MeasureCallback(TrainerCallback):
    """Wall time, peak memory, examples and tokens of the training loop alone; stops on NaN/inf.

    Examples and tokens are counted by a forward pre-hook on the model in training mode, so they are
    exactly the batches that were trained on (the data loader prefetches one batch ahead).
    """

    def __init__(self, model: torch.nn.Module, fp16: bool):
        self.fp16 = fp16
        self.start = self.seconds = 0.0
        self.examples = self.real_tokens = self.padded_tokens = 0
        self.hook = model.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs):
        if module.training and kwargs.get("input_ids") is not None:
            self.examples += kwargs["input_ids"].shape[0]
            self.padded_tokens += kwargs["input_ids"].numel()
            mask = kwargs.get("attention_mask")
            self.real_tokens += int(mask.sum()) if mask is not None else kwargs["input_ids"].numel()

    def on_train_begin(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.start = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            hint = ("fp16 overflows easily: train in fp32 or bf16 (on an Ampere+ GPU), or lower the "
                    "learning rate." if self.fp16 else
                    "lower the learning rate or check the inputs and labels.")
            raise NonFiniteLossError(f"the training loss became {loss} at step {state.global_step}: {hint}")

    def on_train_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self.start
        # Under DDP the job's throughput is every process's examples over the shared wall time.
        self.examples, self.real_tokens, self.padded_tokens = sum_across_processes(
            [self.examples, self.real_tokens, self.padded_tokens])


def peak_memory() -> tuple[int, str]:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated(), "cuda_max_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process_peak_rss"


def build_trainer(loaded: LoadedModel, train_dataset, config: TrainConfig) -> tuple[Trainer, MeasureCallback]:
    """A Trainer with mixed precision matched to the model's compute dtype and our collator."""
    set_seed(config.seed)
    on_gpu = torch.cuda.is_available()
    fp16 = on_gpu and loaded.compute_dtype == torch.float16
    bf16 = on_gpu and loaded.compute_dtype == torch.bfloat16
    args = TrainingArguments(
        output_dir=config.output_dir,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation,
        learning_rate=config.learning_rate,
        warmup_steps=config.warmup_ratio,  # a float < 1 is a share of the steps in transformers 5
        weight_decay=config.weight_decay,
        optim=config.optimizer,
        fp16=fp16,
        bf16=bf16,
        seed=config.seed,
        train_sampling_strategy="group_by_length" if config.group_by_length else "random",
        logging_steps=config.logging_steps,
        logging_nan_inf_filter=False,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=1,
        eval_strategy="no",
        report_to="none",
        use_cpu=not on_gpu,
        ddp_find_unused_parameters=False,
        dataloader_num_workers=0,
    )
    collator = LengthDroppingCollator(loaded.tokenizer, pad_to_multiple_of=config.pad_to_multiple_of)
    measure = MeasureCallback(loaded.model, fp16)
    trainer = Trainer(model=loaded.model, args=args, train_dataset=train_dataset,
                      data_collator=collator, callbacks=[measure])
    # transformers 5 takes a forward with **kwargs to mean "normalises its loss by num_items_in_batch"
    # and then skips dividing by gradient_accumulation. Sequence classifiers return a plain mean, so
    # with accumulation N the logged loss and the gradients came out N times too large.
    trainer.model_accepts_loss_kwargs = False
    return trainer, measure


def train(loaded: LoadedModel, train_dataset, config: TrainConfig) -> TrainStats:
    """Train, resuming from the last checkpoint in `config.output_dir` if an earlier run left one.

    On CUDA out-of-memory, retry with half the micro-batch and twice the accumulation (the
    effective batch, and so the optimizer steps, stay the same) while `config.retry_on_oom`;
    otherwise raise an error that says which knob to turn.
    """
    while True:
        try:
            return _train_once(loaded, train_dataset, config)
        except torch.OutOfMemoryError as error:
            if not config.retry_on_oom or config.batch_size == 1:
                raise OutOfMemoryAdvice(
                    f"CUDA out of memory at batch_size={config.batch_size}: halve batch_size and double "
                    "gradient_accumulation (same effective batch), lower max_length, or turn on "
                    "gradient_checkpointing / use method='qlora'."
                ) from error
            config = replace(config, batch_size=config.batch_size // 2,
                             gradient_accumulation=config.gradient_accumulation * 2)
            print(f"CUDA out of memory: retrying with batch_size={config.batch_size}, "
                  f"gradient_accumulation={config.gradient_accumulation} (same effective batch)")
            gc.collect()
            torch.cuda.empty_cache()


def _train_once(loaded: LoadedModel, train_dataset, config: TrainConfig) -> TrainStats:
    trainer, measure = build_trainer(loaded, train_dataset, config)
    last = get_last_checkpoint(config.output_dir) if Path(config.output_dir).is_dir() else None
    if last:
        print(f"resuming from {last}")
    try:
        trainer.train(resume_from_checkpoint=last)
    finally:
        measure.hook.remove()  # a retry builds a new callback; never count a batch twice
    peak, kind = peak_memory()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    losses = [entry["loss"] for entry in logged]
    seen = [round(entry["epoch"] * len(train_dataset)) for entry in logged]
    final = losses[-1] if losses else float("nan")
    return TrainStats(measure.seconds, trainer.state.global_step, measure.examples, measure.real_tokens,
                      measure.padded_tokens, peak, kind, final, losses, seen)
