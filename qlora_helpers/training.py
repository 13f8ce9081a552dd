"""Train with the Hugging Face Trainer, measuring what the comparison needs.

Measured per run: examples/s, real (non-padding) tokens/s, the padding share of the batches, wall
time, and peak memory (CUDA allocator peak on GPU, process peak RSS on CPU). Batches are padded
to their own longest row (rounded to a multiple of 8) and grouped by length, which on Banking77
removes most of the padding that fixed 128-token batches carry.
"""
from __future__ import annotations

import copy
import gc
import hashlib
import json
import math
import resource
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments, set_seed
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from . import atomic, defaults, flat_optimizer, graphs, modeling
from .distributed import is_main_process, mean_across_processes, sum_across_processes, world_size
from .modeling import LoadedModel

SETTINGS_FILE = "run_settings.json"  # beside the checkpoints: the settings they were made with


class TrainingDivergedError(RuntimeError):
    """The training loss diverged again after every rollback TrainConfig.divergence_retries allows:
    training on would only produce a useless model. The message names the learning rate to try."""


class NonFiniteLossError(TrainingDivergedError):
    """The divergence was a loss that became NaN or inf."""


class OutOfMemoryAdvice(RuntimeError):
    """CUDA ran out of memory: the message says which knob to turn."""


@dataclass
class TrainConfig:
    """What `build_trainer` needs; `default_train_config(method)` fills the method's defaults
    (defaults.py), so the knobs below the first block are the only ones with a value of their own."""
    epochs: float
    batch_size: int  # micro-batch per device
    gradient_accumulation: int  # micro-batches per optimizer step
    learning_rate: float
    warmup_ratio: float
    weight_decay: float
    max_length: int
    optimizer: str
    output_dir: str = "runs/demo/model"
    seed: int = 42
    group_by_length: bool = True
    pad_to_multiple_of: int = 8
    logging_steps: int = 20
    save_steps: int = 200
    max_steps: int = -1  # > 0 overrides epochs (benchmarks, smoke runs)
    # On CUDA OOM: drop a checkpointing limit that was on, else halve batch_size and double
    # gradient_accumulation; retry from the starting weights
    # (kept in CPU memory meanwhile: for `full`, a copy of the whole model).
    retry_on_oom: bool = True
    # torch.compile each decoder layer (compile_decoder_layers): fewer, fused kernels where a step is
    # bound by kernel launches, not arithmetic; the first steps pay for compiling. It paid without
    # gradient checkpointing only (inside checkpointed layers: 0.99x on the 7B, 0.67x on SmolLM2).
    # Off by default: bench/results/SUMMARY.md ("Step cost") has what it bought and why.
    compile_layers: bool = False
    # Replay the decoder stack's forward and backward as CUDA graphs (graphs.py): one launch instead of
    # thousands where a step waits on kernel launches (H200, T4 profile, one epoch with every recording:
    # 2.16x the 7B QLoRA examples/s, 4.19x SmolLM2's; the same validation accuracy under three seeds).
    # None (the default): on where graphs can run (a CUDA GPU, one process, no dropout, a decoder
    # classifier), otherwise off, and one printed line says why; a recording that fails turns them off
    # the same way and training goes on. True: on, or ValueError before any work; False: off.
    cuda_graphs: bool | None = None
    # With gradient checkpointing: recompute activations only for micro-batches of more than this many
    # padded tokens (batch x length); smaller ones keep theirs and skip the recomputed forward, a third
    # of a frozen base's matmuls (limit_checkpointing). None: every micro-batch recomputes. "auto" (the
    # default): on a CUDA GPU, the most tokens memory.tokens_without_checkpointing says this model can
    # keep with 1 GiB of the GPU (or of the T4 it emulates) to spare (7B QLoRA, T4: 1024); None on CPU.
    # With graphs and fused AdamW it took the 7B to 3.10x the old default's examples/s over an epoch at
    # 11.7 GiB (H200, T4 profile, run 10): bench/results/SUMMARY.md ("Step cost").
    checkpoint_above_tokens: int | str | None = "auto"
    # A bitsandbytes optimizer (QLoRA's paged 8-bit AdamW) updates all the trainable tensors as one flat
    # buffer, in one call a step, not one per tensor (flat_optimizer: the same update, 8 bytes a trainable
    # parameter more). False: bitsandbytes' own tensor-by-tensor loop, the benchmark's comparison.
    flat_optimizer: bool = True
    # When the logged training loss turns NaN/inf, or climbs back to chance after having learned
    # (`divergence`): roll back to the last healthy logging step (trainable weights, optimizer state and
    # schedule, kept in CPU memory meanwhile: for `full`, a copy of the whole model and its optimizer
    # state; a second divergence goes back to where training began), lower the learning rate for the rest
    # of the run and train on; at most this many times,
    # then raise TrainingDivergedError naming the learning rate. 0: raise at once, keeping no copy.
    divergence_retries: int = 3
    # Each rollback multiplies the schedule's learning rate (its peak and where it now is) by this.
    divergence_lr_factor: float = 0.5


def default_train_config(method: str, **overrides) -> TrainConfig:
    """The method's defaults (defaults.py: chosen by validation accuracy per second of training on
    real SmolLM2-135M weights) with `overrides`. Batches are padded to their own longest row and
    grouped by length. Raises ValueError for an unknown method."""
    chosen = defaults.for_method(method)
    values = {name: getattr(chosen, name) for name in ("epochs", "batch_size", "gradient_accumulation",
                                                       "learning_rate", "warmup_ratio", "weight_decay",
                                                       "max_length", "optimizer")}
    return TrainConfig(**{**values, **overrides})


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
    batch_size: int | None = None  # the micro-batch that ran (an OOM retry halves the one asked for)
    gradient_accumulation: int | None = None
    resumed_from_step: int = 0  # the checkpoint this run resumed from; 0: trained from scratch
    processes: int = 1  # data-parallel processes (one per GPU) that trained; batch_size is per process
    # each divergence rolled back (DivergenceGuard): step, loss, reason ("non-finite", "back to chance"),
    # rolled_back_to (step), old_learning_rate and new_learning_rate (the schedule's peak); none in
    # results from before it existed
    recoveries: list[dict] = field(default_factory=list)
    peak_learning_rate: float | None = None  # the schedule's peak the run ended with; None: not recorded
    # the step-cost levers the run ended with (training.step_levers): cuda_graphs, checkpoint_above_tokens,
    # compile_layers, optimizer, flat_optimizer (since issue 27's flat update); empty in results from before it existed
    step_levers: dict = field(default_factory=dict)
    # the CUDA allocator's reserved peak: peak_memory_bytes plus the blocks it keeps cached, the CUDA graphs'
    # pool among them (4.6 GiB on Qwen2.5-1.5B QLoRA, bench/README.md): what a GPU, or the T4 cap, must
    # hold. None on CPU and in results from before it existed
    peak_reserved_bytes: int | None = None

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
    """Wall time, peak memory, examples and tokens of the training loop alone.

    Examples and tokens are counted by a forward pre-hook on the model in training mode, so they are
    exactly the batches that were trained on (the data loader prefetches one batch ahead).
    """

    def __init__(self, model: torch.nn.Module):
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

    def on_train_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self.start
        # Under DDP the job's throughput is every process's examples over the shared wall time.
        self.examples, self.real_tokens, self.padded_tokens = sum_across_processes(
            [self.examples, self.real_tokens, self.padded_tokens])


# A classifier's loss at chance is ln(num_labels), a uniform guess's cross-entropy (ln 77 = 4.34).
LEARNED_SHARE_OF_CHANCE = 0.5  # a best logged loss under this share of it: the run had learned
BACK_SHARE_OF_CHANCE = 0.9  # a logged loss at this share of it or more, after that: guessing again


def divergence(loss: float, best_loss: float, num_labels: int | None) -> str | None:
    """Why the logged training `loss` says the run diverged, or None while it is healthy.

    "non-finite": NaN or inf. "back to chance": the run had learned (`best_loss`, its lowest logged
    loss, under LEARNED_SHARE_OF_CHANCE x ln(num_labels)) and its loss is back near a uniform guess's
    (BACK_SHARE_OF_CHANCE x ln(num_labels) or more): on real weights a too high learning rate does
    that before the loss turns NaN, and the steps in between are wasted. Without labels to guess
    among (num_labels None or 1: regression) only a non-finite loss counts.
    """
    if not math.isfinite(loss):
        return "non-finite"
    if num_labels and num_labels > 1:
        chance = math.log(num_labels)
        if best_loss < LEARNED_SHARE_OF_CHANCE * chance and loss >= BACK_SHARE_OF_CHANCE * chance:
            return "back to chance"
    return None


def format_learning_rate(learning_rate: float) -> str:
    """A learning rate as people write it: 2e-3, 2.5e-4."""
    return np.format_float_scientific(learning_rate, trim="-", exp_digits=1, precision=3)


@dataclass
class _Snapshot:
    """The training state at a healthy logging step, in CPU memory: what a rollback restores."""
    step: int
    weights: dict[str, torch.Tensor]  # the trainable parameters
    optimizer: dict  # its state_dict, tensors copied to CPU
    scheduler: dict
    total_loss: float  # the Trainer's running loss sum (its final train_loss), kept finite


def _cpu_copy(value):
    """A copy of a state_dict with every tensor in CPU memory: a snapshot must not share the live state."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {key: _cpu_copy(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_cpu_copy(item) for item in value)
    return copy.deepcopy(value)


class DivergenceGuard(TrainerCallback):
    """Catches a diverging run at a logging step and rolls it back, at a lower learning rate
    (TrainConfig.divergence_retries, divergence_lr_factor), instead of training on to a useless model.

    At each healthy logging step it keeps a CPU snapshot of the trainable weights, the optimizer state
    and the schedule; when the logged loss diverges (`divergence`) it copies them back, multiplies the
    learning rate, says so in one line, and the Trainer's loop goes on (the step count does not go
    back: the steps since the snapshot are lost, and the schedule runs that far behind the step count).
    A second divergence rolls back to the state training began from instead: weights that a too high
    rate grew can diverge again at a rate that trains well from the start. Under DDP every process
    decides from the same value (mean_across_processes of the logged loss), so all roll back at the
    same step to the same snapshot; only the main process prints.

    Each recovery is also recorded in the Trainer's log history, so checkpoints carry it: a resumed run
    still counts its tries and reports its recoveries, and its optimizer and schedule state carry the
    lowered learning rate (config.learning_rate, which decides what may resume, stays the one asked for).
    """

    def __init__(self, trainer: Trainer, retries: int, lr_factor: float):
        self.trainer = trainer  # for its running loss, which a NaN would poison for the rest of the run
        self.retries, self.lr_factor = retries, lr_factor
        self.snapshot: _Snapshot | None = None  # the last healthy logging step's state
        self.start: _Snapshot | None = None  # the state training began from: where a second divergence goes
        self.best_loss = math.inf
        self.num_labels: int | None = None

    @staticmethod
    def recoveries(state) -> list[dict]:
        """The run's recoveries, those before a resume included: the Trainer's log history holds them."""
        return [entry["divergence_recovery"] for entry in state.log_history if "divergence_recovery" in entry]

    def on_train_begin(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):
        self.num_labels = getattr(model.config, "num_labels", None)
        logged = [entry["loss"] for entry in state.log_history if "loss" in entry]
        self.best_loss = min((loss for loss in logged if math.isfinite(loss)), default=math.inf)  # a resumed run's
        if self.retries:
            self.start = self.snapshot = self._take_snapshot(state.global_step, model, optimizer, lr_scheduler)

    def on_log(self, args, state, control, logs=None, model=None, optimizer=None, lr_scheduler=None, **kwargs):
        if "loss" not in (logs or {}):
            return
        loss = mean_across_processes(logs["loss"])
        reason = divergence(loss, self.best_loss, self.num_labels)
        if reason is None:
            self.best_loss = min(self.best_loss, loss)
            if self.retries:
                self.snapshot = self._take_snapshot(state.global_step, model, optimizer, lr_scheduler)
            return
        tries = len(self.recoveries(state))
        what = self._what(reason, loss, state.global_step)
        peak = max(lr_scheduler.base_lrs)
        if tries >= self.retries:
            raise self._advice(reason, what, tries, args.learning_rate, peak, args.fp16)
        new_peak = peak * self.lr_factor
        if tries:  # diverged again: the weights the high rate grew stay fragile (H100, Qwen2.5-0.5B, lr 8e-3:
            self.snapshot, self.best_loss = self.start, math.inf  # NaN 7 steps after each rollback), so restart
        self._roll_back(model, optimizer, lr_scheduler, new_peak)
        state.log_history.append({"divergence_recovery": {
            "step": state.global_step, "loss": loss, "reason": reason, "rolled_back_to": self.snapshot.step,
            "old_learning_rate": peak, "new_learning_rate": new_peak}, "step": state.global_step})
        if is_main_process():
            print(f"{what}: rolled back to step {self.snapshot.step} and lowered the learning rate "
                  f"{format_learning_rate(peak)} -> {format_learning_rate(new_peak)} "
                  f"(try {tries + 1} of {self.retries})")

    def _what(self, reason: str, loss: float, step: int) -> str:
        if reason == "non-finite":
            return f"loss {loss} at step {step} is not finite"
        chance = math.log(self.num_labels)
        return f"loss {loss:.2f} at step {step} is back at chance (ln {self.num_labels} = {chance:.2f})"

    @staticmethod
    def _advice(reason: str, what: str, tries: int, asked: float, peak: float,
                fp16: bool) -> TrainingDivergedError:
        """The error that ends a run out of tries: the learning rate first, the usual cause."""
        again = (f", after {tries} rollback{'s' if tries > 1 else ''} to a lower learning rate "
                 f"(last {format_learning_rate(peak)})" if tries else "")
        fix = f"lower learning_rate (now {format_learning_rate(asked)}), e.g. to {format_learning_rate(peak / 4)}"
        if reason == "non-finite":
            fix += ("; training in bf16 (Ampere+ GPU) or fp32, which overflow less easily than fp16, may help too"
                    if fp16 else "; if that does not help, check the inputs and labels")
        error = NonFiniteLossError if reason == "non-finite" else TrainingDivergedError
        return error(f"the training {what}{again}: {fix}.")

    def _take_snapshot(self, step: int, model, optimizer, lr_scheduler) -> _Snapshot:
        return _Snapshot(
            step, trainable_weights(model), _cpu_copy(optimizer.state_dict()), copy.deepcopy(lr_scheduler.state_dict()),
            self.trainer._total_loss_scalar)

    @torch.no_grad()
    def _roll_back(self, model, optimizer, lr_scheduler, peak: float) -> None:
        """Restore the snapshot, its schedule scaled to peak at `peak`, and forget the losses since."""
        _restore(model, self.snapshot.weights)
        optimizer.load_state_dict(copy.deepcopy(self.snapshot.optimizer))  # a copy: on CPU it would alias
        lr_scheduler.load_state_dict(copy.deepcopy(self.snapshot.scheduler))
        scale = peak / max(lr_scheduler.base_lrs)
        lr_scheduler.base_lrs = [lr * scale for lr in lr_scheduler.base_lrs]
        for group in optimizer.param_groups:
            group["lr"] *= scale
            group["initial_lr"] *= scale
        lr_scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
        self.trainer._tr_loss.zero_()  # NaN - NaN stays NaN: the Trainer's own reset cannot clear it
        self.trainer._total_loss_scalar = self.snapshot.total_loss


def peak_memory() -> tuple[int, str]:
    """(bytes, kind) of the peak since the last reset: live tensors on CUDA (max_memory_allocated), the
    process's resident set on CPU."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated(), "cuda_max_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process_peak_rss"


def peak_reserved() -> int | None:
    """Bytes the CUDA allocator held at its peak since the last reset (max_memory_reserved): live tensors
    and the blocks it caches, those of CUDA graphs' private pools among them, which only it can reuse.
    A GPU's memory limit counts these, so a run fits where this does. None on CPU."""
    return torch.cuda.max_memory_reserved() if torch.cuda.is_available() else None


def mixed_precision(loaded: LoadedModel) -> dict:
    """`TrainingArguments`' fp16, bf16 and use_cpu for the model's compute dtype: fp16 autocast on a T4
    (no native bf16), bf16 on Ampere and newer, none on a CPU or where fp16 would overflow (fp32 compute)."""
    on_gpu = torch.cuda.is_available()
    return {"fp16": on_gpu and loaded.compute_dtype == torch.float16,
            "bf16": on_gpu and loaded.compute_dtype == torch.bfloat16, "use_cpu": not on_gpu}


def training_arguments(loaded: LoadedModel, config: TrainConfig) -> TrainingArguments:
    """The `TrainingArguments` build_trainer gives the Trainer: `config`'s knobs, mixed precision
    matched to the model's compute dtype, batches grouped by length, a checkpoint every `save_steps`
    optimizer steps. Notebooks 01-03 write the same call out in a cell (a test keeps them equal)."""
    return TrainingArguments(
        output_dir=config.output_dir,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation,
        learning_rate=config.learning_rate,
        warmup_steps=config.warmup_ratio,  # a float < 1 is a share of the steps in transformers 5
        weight_decay=config.weight_decay,
        optim=config.optimizer,
        **mixed_precision(loaded),
        seed=config.seed,
        train_sampling_strategy="group_by_length" if config.group_by_length else "random",
        logging_steps=config.logging_steps,
        logging_nan_inf_filter=False,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=1,
        eval_strategy="no",
        report_to="none",
        ddp_find_unused_parameters=False,
        dataloader_num_workers=0,
    )


def compile_decoder_layers(model: torch.nn.Module) -> int:
    """torch.compile every decoder layer of `model` in place; returns how many layers were compiled.

    Regional compilation (PyTorch's recipe for models built of repeated blocks): the layers share
    one compiled graph, so compiling costs about one layer's time, not the model's, and the parts
    that do not trace well (the head, the loss, peft's wrappers) stay eager. A decoder layer is
    what transformers checkpoints (`GradientCheckpointingLayer`). A layer that checkpoints its
    activations has its blocks (attention, MLP, norms) compiled instead of itself: the eager
    checkpoint around them then keeps only the layer's input, while a compiled layer around the
    checkpoint kept its activations (7B QLoRA under the T4 cap ran out of memory that way,
    bench/results/SUMMARY.md). Modules already compiled are left alone. ValueError if the model
    has no decoder layers (then there is nothing this knob can speed up).
    """
    layers = modeling.decoder_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no decoder layers that transformers can checkpoint: "
                         "train it with compile_layers=False.")
    for layer in layers:
        for module in layer.children() if layer.gradient_checkpointing else [layer]:
            if not _compiled(module):
                module.compile(dynamic=True)  # symbolic batch and length: one graph for every batch
    return len(layers)


def _compiled(module: torch.nn.Module) -> bool:
    """True once `module.compile()` has run (nn.Module keeps the compiled call there)."""
    return getattr(module, "_compiled_call_impl", None) is not None


@dataclass
class _CheckpointLimit:
    """What limit_checkpointing changed: the layers that checkpointed, and the hook that decides."""
    layers: list[torch.nn.Module]
    hook: torch.utils.hooks.RemovableHandle
    above_tokens: int


def limit_checkpointing(model: torch.nn.Module, above_tokens: int | None) -> None:
    """Let the decoder layers that checkpoint do so only for micro-batches of more than `above_tokens`
    padded tokens (input_ids' batch x length); None undoes it (every one of them checkpoints again).

    The choice is made per forward, before the layers run (a forward pre-hook on the module that
    holds them), so it also holds while graphs.py records a batch shape: each shape's graphs keep
    or recompute activations as their size allows. ValueError, naming the fix, if no decoder layer
    checkpoints (then there is nothing to limit).
    """
    holder = modeling.base_model(model)
    state = holder.__dict__.pop("_qlora_checkpoint_limit", None)
    if state is not None:
        state.hook.remove()
        for layer in state.layers:
            layer.gradient_checkpointing = True
    if above_tokens is None:
        return
    layers = [layer for layer in modeling.decoder_layers(holder) if layer.gradient_checkpointing]
    if not layers:
        raise ValueError("checkpoint_above_tokens needs gradient checkpointing on (no decoder layer "
                         "checkpoints): turn gradient_checkpointing on, or set checkpoint_above_tokens=None.")

    def choose(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if isinstance(ids, torch.Tensor) and ids.dim() == 2:
            recompute = ids.numel() > above_tokens
            for layer in layers:
                layer.gradient_checkpointing = recompute

    hook = holder.register_forward_pre_hook(choose, with_kwargs=True)
    holder._qlora_checkpoint_limit = _CheckpointLimit(layers, hook, above_tokens)


def active_checkpoint_limit(model: torch.nn.Module) -> int | None:
    """The tokens above which `model`'s micro-batches checkpoint (limit_checkpointing), or None: no limit on."""
    limit = modeling.base_model(model).__dict__.get("_qlora_checkpoint_limit")
    return limit.above_tokens if limit else None


def step_levers(trainer: Trainer) -> dict:
    """The step-cost levers `trainer` trained with (read before release_training_state): {"cuda_graphs": whether
    its model's stack still replays graphs, "checkpoint_above_tokens": the limit (None: none), "compile_layers":
    whether its decoder layers run compiled (compile_decoder_layers), "optimizer": TrainingArguments' optim,
    "flat_optimizer": whether that optimizer ran on one flat buffer (flat_optimizer)}."""
    model = trainer.model
    compiled = any(_compiled(module) for layer in modeling.decoder_layers(model)
                   for module in (layer, *layer.children()))
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # inside accelerate's wrapper
    return {"cuda_graphs": graphs.active(model), "checkpoint_above_tokens": active_checkpoint_limit(model),
            "compile_layers": compiled, "optimizer": str(getattr(trainer.args.optim, "value", trainer.args.optim)),
            "flat_optimizer": isinstance(optimizer, flat_optimizer.FlatOptimizer)}


def release_training_state(model: torch.nn.Module) -> None:
    """Undo what build_trainer changed on `model` for training (its CUDA graphs, with their memory, and a
    checkpointing limit), so that evaluation, or the next training setup, finds the model as loaded."""
    graphs.disable(model)
    limit_checkpointing(model, None)


def prepare_for_training(model: torch.nn.Module, config: TrainConfig) -> None:
    """Before the Trainer is built: the seed, then the step-cost levers (a checkpointing limit, compiled
    decoder layers, CUDA graphs). A lever left to choose (cuda_graphs None, checkpoint_above_tokens
    "auto") is on where it can run and says so in one printed line, or why not; one asked for that
    cannot run raises ValueError before any work. What ran is in TrainStats.step_levers."""
    set_seed(config.seed)
    above = checkpoint_limit(model, config)
    if above is not None:
        limit_checkpointing(model, above)  # ValueError without checkpointing
    if config.compile_layers:
        compile_decoder_layers(model)
    use_graphs = bool(config.cuda_graphs)
    if config.cuda_graphs is None:  # the adapter methods only: a full fine-tune's graphs were never measured
        reason = "full fine-tuning (they are for LoRA and QLoRA)" if not hasattr(model, "peft_config") else \
            graphs.unavailable(model)
        use_graphs = reason is None
        _say("CUDA graphs: on (the decoder stack replays as two graphs per batch shape)" if use_graphs
             else f"CUDA graphs: off: {reason.split(': ')[0]}")
    if use_graphs:
        graphs.enable(model, fall_back=config.cuda_graphs is None)  # ValueError before any work where they cannot run


def checkpoint_limit(model: torch.nn.Module, config: TrainConfig) -> int | None:
    """config.checkpoint_above_tokens, with "auto" resolved for `model` (see TrainConfig): None on CPU and
    where no decoder layer checkpoints; else the tokens memory.tokens_without_checkpointing allows on this
    GPU, or on the T4 it emulates, with 1 GiB to spare (printed in one line). ValueError for another string."""
    above = config.checkpoint_above_tokens
    if not isinstance(above, str):
        return above
    if above != "auto":
        raise ValueError(f"checkpoint_above_tokens={above!r}: use a number of tokens, None or 'auto'.")
    checkpointing = [layer for layer in modeling.decoder_layers(model)
                     if getattr(layer, "gradient_checkpointing", False)]
    device = next(model.parameters()).device
    if not checkpointing or device.type != "cuda":
        return None
    from . import emulation, memory

    total_mib = torch.cuda.get_device_properties(device).total_memory // 2**20
    gpu = (memory.GPUS["T4"] if emulation.emulated_gpu() == "t4" else
           memory.GPU(torch.cuda.get_device_name(device), total_mib, bf16=torch.cuda.is_bf16_supported()))
    return size_checkpoint_limit(model, config, gpu)


def size_checkpoint_limit(model: torch.nn.Module, config: TrainConfig, gpu) -> int | None:
    """checkpoint_above_tokens "auto" for `model` on `gpu` (a memory.GPU), said in one printed line: the most
    padded tokens memory.tokens_without_checkpointing lets a micro-batch keep activations for with 1 GiB to
    spare; None (every micro-batch checkpoints) where none fits, or where the model's shape cannot be read."""
    from . import memory

    base = modeling.base_model(model)
    peft_config = getattr(model, "peft_config", {}).get("default")
    method = "qlora" if getattr(base, "is_loaded_in_4bit", False) else ("lora" if peft_config else "full")
    try:
        tokens = memory.tokens_without_checkpointing(
            memory.ModelShape.from_config(base.config), method, gpu, batch_size=config.batch_size,
            max_length=config.max_length, optimizer=config.optimizer, lora_r=getattr(peft_config, "r", 16),
            lora_dropout=getattr(peft_config, "lora_dropout", 0.0))
    except (AttributeError, KeyError, TypeError, ValueError) as error:  # a config memory.py cannot read
        _say(f"gradient checkpointing: every micro-batch (the limit could not be sized for "
             f"{type(base.config).__name__}: {error})")
        return None
    if tokens == 0:
        _say(f"gradient checkpointing: every micro-batch (none fits {gpu.name}'s memory without it)")
        return None
    if tokens >= config.batch_size * config.max_length:
        _say(f"gradient checkpointing: no micro-batch recomputes its activations (even {config.batch_size} x "
             f"{config.max_length} tokens fit {gpu.name}'s memory with 1 GiB to spare; checkpoint_above_tokens='auto')")
    else:
        _say(f"gradient checkpointing: only micro-batches over {tokens:,} padded tokens recompute their activations "
             f"(smaller ones fit {gpu.name}'s memory with 1 GiB to spare; checkpoint_above_tokens='auto')")
    return tokens


def _say(line: str) -> None:
    if is_main_process():
        print(line)


def finish_trainer(trainer: Trainer, config: TrainConfig) -> None:
    """What the series adds to a plain `Trainer`: the DivergenceGuard (roll back a diverging loss at a
    lower learning rate), the progress bar without its per-log table, the loss scaled right under
    gradient accumulation, and a bitsandbytes optimizer (QLoRA's paged 8-bit AdamW) updating all the
    adapters in one call instead of one per tensor (flat_optimizer)."""
    trainer.add_callback(DivergenceGuard(trainer, config.divergence_retries, config.divergence_lr_factor))
    if config.flat_optimizer:
        flat_optimizer.flatten_8bit_optimizer(trainer)
    _progress_bar_only(trainer)
    # transformers 5 takes a forward with **kwargs to mean "normalises its loss by num_items_in_batch"
    # and then skips dividing by gradient_accumulation. Sequence classifiers return a plain mean, so
    # with accumulation N the logged loss and the gradients came out N times too large.
    trainer.model_accepts_loss_kwargs = False


def build_trainer(loaded: LoadedModel, train_dataset, config: TrainConfig) -> tuple[Trainer, MeasureCallback]:
    """The Trainer notebooks 01-03 build in their cells, for code that has no notebook (scripts, benchmarks,
    the launched processes): `training_arguments`, our collator, the measuring callback, `finish_trainer`."""
    prepare_for_training(loaded.model, config)
    measure = MeasureCallback(loaded.model)
    trainer = Trainer(model=loaded.model, args=training_arguments(loaded, config), train_dataset=train_dataset,
                      data_collator=LengthDroppingCollator(loaded.tokenizer, pad_to_multiple_of=config.pad_to_multiple_of),
                      callbacks=[measure])
    finish_trainer(trainer, config)
    return trainer, measure


def _progress_bar_only(trainer: Trainer) -> None:
    """Keep the Trainer's progress bar, not what it writes at each logged loss: a table row under the bar
    in a notebook (45 rows above the loss curve, which plots the same losses), a dict line in a terminal."""
    from transformers.trainer import DEFAULT_PROGRESS_CALLBACK  # NotebookProgressCallback in a Jupyter kernel

    class BarOnly(DEFAULT_PROGRESS_CALLBACK):
        def on_train_begin(self, args, state, control, **kwargs):
            super().on_train_begin(args, state, control, **kwargs)
            if getattr(self, "training_tracker", None) is not None:
                self.training_tracker.inner_table = None  # the table's header row, shown even without rows

        def on_log(self, args, state, control, logs=None, **kwargs):
            pass

    if trainer.pop_callback(DEFAULT_PROGRESS_CALLBACK) is not None:
        trainer.add_callback(BarOnly())


def train(loaded: LoadedModel, train_dataset, config: TrainConfig, trainer: Trainer | None = None) -> TrainStats:
    """Train `trainer` (a notebook's, built on `loaded.model` and `train_dataset` with a MeasureCallback
    and `finish_trainer`; None: `build_trainer` builds it), resuming from the newest complete checkpoint
    in `config.output_dir` that was made with the same settings (see checkpoint_to_resume).

    On CUDA out-of-memory, retry first without the checkpointing limit if one was on (every micro-batch
    checkpointed), then with half the micro-batch and twice the accumulation (the
    effective batch, and so the optimizer steps, stay the same) while `config.retry_on_oom`,
    on a Trainer `build_trainer` builds for the smaller micro-batch, from the trainable weights the
    first attempt started with (or from a checkpoint it saved); otherwise raise an error that says
    which knob to turn.
    """
    start = trainable_weights(loaded.model) if config.retry_on_oom else {}
    while True:
        try:
            if trainer is None:
                trainer = build_trainer(loaded, train_dataset, config)[0]
            return _train_once(trainer, loaded, train_dataset, config)
        except torch.OutOfMemoryError as error:
            limited = trainer is not None and active_checkpoint_limit(trainer.model) is not None
            if trainer is not None:
                release(trainer)
            if config.retry_on_oom and limited:  # the memory a limit spends comes back first, at the same batch
                config = replace(config, checkpoint_above_tokens=None)
                print("CUDA out of memory with micro-batches that skip checkpointing: retrying with every micro-batch "
                      "checkpointed (checkpoint_above_tokens=None) on a new Trainer")
            elif not config.retry_on_oom or config.batch_size == 1:
                raise OutOfMemoryAdvice(
                    f"CUDA out of memory at batch_size={config.batch_size}: halve batch_size and double "
                    "gradient_accumulation (same effective batch), lower max_length, or turn on "
                    "gradient_checkpointing / use method='qlora'."
                ) from error
            else:
                config = replace(config, batch_size=config.batch_size // 2,
                                 gradient_accumulation=config.gradient_accumulation * 2)
                print(f"CUDA out of memory: retrying with batch_size={config.batch_size}, "
                      f"gradient_accumulation={config.gradient_accumulation} (same effective batch) on a new Trainer")
            trainer = None
            _restore(loaded.model, start)  # the failed attempt may have taken optimizer steps already
            gc.collect()
            torch.cuda.empty_cache()


def measure_callback(trainer: Trainer) -> MeasureCallback:
    """The trainer's MeasureCallback; ValueError, naming the fix, if it has none."""
    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, MeasureCallback):
            return callback
    raise ValueError("the Trainer has no MeasureCallback to measure the run with: build it with "
                     "callbacks=[training.MeasureCallback(model)].")


def release(trainer: Trainer) -> None:
    """After training (or instead of it): stop counting batches, and undo what prepare_for_training
    changed on the model (see release_training_state)."""
    measure_callback(trainer).hook.remove()  # a retry builds a new callback; never count a batch twice
    release_training_state(trainer.model)  # e.g. the graphs' memory back before evaluation


def trainable_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of `model`'s trainable parameters by name: what `_restore` puts back (an OOM retry, a
    divergence rollback)."""
    return {name: param.detach().to("cpu", copy=True) for name, param in model.named_parameters()
            if param.requires_grad}


@torch.no_grad()
def _restore(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    for name, param in model.named_parameters():
        if name in weights:
            param.copy_(weights[name])
            param.grad = None


def _train_once(trainer: Trainer, loaded: LoadedModel, train_dataset, config: TrainConfig) -> TrainStats:
    measure = measure_callback(trainer)
    with trainer.args.main_process_first(local=False, desc="checkpoint choice"):
        last = checkpoint_to_resume(config.output_dir, run_settings(loaded, train_dataset, config))
    if last:
        print(f"resuming from {last.name}")
    try:
        trainer.train(resume_from_checkpoint=str(last) if last else None)
        levers = step_levers(trainer)
    finally:
        release(trainer)
    peak, kind = peak_memory()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    losses = [entry["loss"] for entry in logged]
    seen = [round(entry["epoch"] * len(train_dataset)) for entry in logged]
    final = losses[-1] if losses else float("nan")
    return TrainStats(measure.seconds, trainer.state.global_step, measure.examples, measure.real_tokens,
                      measure.padded_tokens, peak, kind, final, losses, seen, config.batch_size,
                      config.gradient_accumulation, _step(last) if last else 0, world_size(),
                      DivergenceGuard.recoveries(trainer.state), max(trainer.lr_scheduler.base_lrs), levers,
                      peak_reserved())


# Which checkpoint may resume this run --------------------------------------------------------------
def run_settings(loaded: LoadedModel, train_dataset, config: TrainConfig) -> dict:
    """Every setting that shapes the trained weights, JSON-ready: a checkpoint resumes only a run
    whose settings equal those it was made with.

    The batch counts by its effective size (batch_size x gradient_accumulation x processes), the one
    the optimizer steps with, so the OOM retry's smaller micro-batch continues the same run. The
    training rows count by a SHA-256 of their labels and token ids: the subset, max_length and
    tokenizer all show there.
    """
    table = train_dataset.with_format("arrow")[:]  # the rows as selected, straight from Arrow: fast
    ids = table.column("input_ids").combine_chunks()
    labels = table.column("labels" if "labels" in table.column_names else "label")
    digest = hashlib.sha256()
    for part in (labels.to_numpy(), ids.value_lengths().to_numpy(), ids.flatten().to_numpy()):
        digest.update(np.ascontiguousarray(part, dtype=np.int64).tobytes())
    lora = getattr(loaded.model, "peft_config", {}).get("default")
    targets = getattr(lora, "target_modules", None)
    settings = {
        "model_id": loaded.model_id, "method": loaded.method, "train_rows": len(train_dataset),
        "train_data_sha256": digest.hexdigest(),
        "effective_batch": config.batch_size * config.gradient_accumulation * world_size(),
        "learning_rate": config.learning_rate, "epochs": config.epochs, "max_steps": config.max_steps,
        "warmup_ratio": config.warmup_ratio, "weight_decay": config.weight_decay, "optimizer": config.optimizer,
        "flat_optimizer": config.flat_optimizer,  # its state is one flat buffer's: a per-tensor one cannot load it
        "max_length": config.max_length, "seed": config.seed, "group_by_length": config.group_by_length,
        "lora_r": getattr(lora, "r", None), "lora_alpha": getattr(lora, "lora_alpha", None),
        "lora_dropout": getattr(lora, "lora_dropout", None),
        "lora_target_modules": targets if isinstance(targets, str) or targets is None else sorted(targets),
        "lora_modules_to_save": sorted(set(getattr(lora, "modules_to_save", None) or [])),
    }
    return json.loads(json.dumps(settings))  # as it reads back from the file: lists, not tuples


def checkpoint_to_resume(folder: str | Path, settings: dict) -> Path | None:
    """The newest complete checkpoint in `folder` made with `settings`, or None: train from scratch.

    Tidies `folder` first, each step with a printed note: removes incomplete checkpoints (a save cut
    short, e.g. by a kill: no readable trainer_state.json, which the Trainer writes last), and moves
    checkpoints made with other settings, or with none recorded, and their record to a sibling
    `<folder>.set-aside-N` so the run starts afresh (resuming them would mix two runs). Then
    records `settings` in `folder/run_settings.json`. Only the main process changes files.
    """
    folder = Path(folder)
    main = is_main_process()
    for path in _checkpoints(folder):
        if not _is_complete(path) and main:
            print(f"{path.name} is incomplete (its save was cut short): removed it.")
            shutil.rmtree(path)
    last = last_complete_checkpoint(folder)
    recorded = _read_json(folder / SETTINGS_FILE)
    if last and recorded != settings:
        if main:
            aside = next(folder.with_name(f"{folder.name}.set-aside-{n}") for n in range(1, 10_000)
                         if not folder.with_name(f"{folder.name}.set-aside-{n}").exists())
            aside.mkdir()
            # The record goes last: after a kill midway, the rest has none and is set aside next time.
            for path in [*_checkpoints(folder), folder / SETTINGS_FILE]:
                if path.exists():
                    path.rename(aside / path.name)
            print(f"{folder.name}/ holds checkpoints made with other settings ({_differences(recorded, settings)}): "
                  f"moved them to {aside.name}/ (delete it once not needed) and training from scratch.")
        last = None
    if main:
        atomic.write_text(folder / SETTINGS_FILE, json.dumps(settings, indent=1))
    return last


def last_complete_checkpoint(folder: str | Path) -> Path | None:
    """The checkpoint with the highest step in `folder` whose save finished, or None."""
    return next((path for path in _checkpoints(Path(folder)) if _is_complete(path)), None)


def _checkpoints(folder: Path) -> list[Path]:
    """The Trainer's checkpoint-<step> folders, newest first."""
    found = [path for path in folder.glob(f"{PREFIX_CHECKPOINT_DIR}-*")
             if path.is_dir() and path.name.rsplit("-", 1)[1].isdigit()]
    return sorted(found, key=_step, reverse=True)


def _step(checkpoint: Path) -> int:
    return int(checkpoint.name.rsplit("-", 1)[1])


def _is_complete(checkpoint: Path) -> bool:
    return checkpoint.is_dir() and _read_json(checkpoint / TRAINER_STATE_NAME) is not None


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _differences(recorded: dict | None, settings: dict) -> str:
    if recorded is None:
        return "no record of the settings they were made with"

    def short(value):
        return f"{value[:12]}..." if isinstance(value, str) and len(value) > 40 else value

    changed = [key for key in {**recorded, **settings} if recorded.get(key) != settings.get(key)]
    return "; ".join(f"{key} {short(recorded.get(key))} -> {short(settings.get(key))}" for key in changed)
