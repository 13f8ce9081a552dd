"""What a benchmark run measures and records, in one place: step times and shapes (`StepTimer`), examples/s,
tokens/s and MFU (`summarise_steps`, `step_flops`), allocator peaks under a T4's cap (`MemoryCap`: each
model x method cell gets 14.5 GiB above what earlier cells left allocated), and the run's environment."""
from __future__ import annotations

import gc
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from bench.workload import NUM_LABELS
from qlora_helpers import emulation
from qlora_helpers.memory import ModelShape
from qlora_helpers.notebook import results


def environment() -> dict:
    """Library versions, commit and machine: what every results JSON records about its run."""
    return {**results.library_versions(), "commit": results.code_commit(), "hardware": results.hardware()}


def log(*args) -> None:
    print(f"[{time.strftime('%H:%M:%S')}]", *args, flush=True)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def free() -> None:
    """Collect garbage and hand the allocator's cached blocks back to the device."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def allocated() -> int:
    return torch.cuda.memory_allocated() if torch.cuda.is_available() else 0


def reset_peak() -> None:
    sync()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


@dataclass
class MemoryCap:
    cap_bytes: int | None = None  # a T4's usable memory when emulating one; None: the whole device
    baseline_bytes: int = 0  # allocated before this cell's model loaded (left over by earlier cells)

    def start_cell(self) -> None:
        """What is allocated now becomes the new cell's baseline, and its cap moves up as much."""
        free()
        self.baseline_bytes = allocated()
        self.apply()

    def lift(self) -> None:
        """No cap for the rest of the run (estimator cells that cannot fit a T4, measured anyway)."""
        self.cap_bytes = None
        self.apply()

    @contextmanager
    def loading(self, lifted: bool = False):
        """Around a load (lifted: a checkpoint's build, uncapped). load_model applies $QLORA_EMULATE_GPU's cap
        itself, undoing a lifted one: with no cap the variable is hidden meanwhile; after, this cap is back."""
        if lifted and torch.cuda.is_available():
            torch.cuda.set_per_process_memory_fraction(1.0)
        hidden = os.environ.pop(emulation.ENV_VAR, None) if self.cap_bytes is None else None
        try:
            yield
        finally:
            if hidden is not None:
                os.environ[emulation.ENV_VAR] = hidden
            free()
            self.apply()

    def apply(self) -> None:
        if torch.cuda.is_available():
            total = torch.cuda.get_device_properties(0).total_memory
            cap = total if self.cap_bytes is None else self.cap_bytes + self.baseline_bytes
            torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total))


class StepTimer:
    """Wall time at the end of every optimizer step (CUDA-synchronised) and (batch, padded length, real
    tokens) of each of its micro-batches; torch.profiler's kernels and busy time of step `profile_step` (CUDA)."""

    def __init__(self, model, profile_step: int | None = None):
        from transformers import TrainerCallback

        timer = self
        self.times, self.step_batches, self.pending, self.profile_step = [], [], [], profile_step
        self.profiled_index = self.profiler = self.profile = None
        self.hook = model.register_forward_pre_hook(self.record_batch, with_kwargs=True)

        class Callback(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                sync()
                timer.times.append(time.perf_counter())

            def on_step_begin(self, args, state, control, **kwargs):
                if state.global_step == timer.profile_step and torch.cuda.is_available():
                    timer.profiled_index = len(timer.step_batches)  # it and the next step carry profiler overhead
                    sync()
                    timer.profiler = torch.profiler.profile()
                    timer.profiler.__enter__()
                    timer.profile_start = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                sync()
                timer.times.append(time.perf_counter())
                timer.step_batches.append(timer.pending)
                timer.pending = []
                if timer.profiler is not None:
                    timer.profiler.__exit__(None, None, None)
                    kernels = [e for e in timer.profiler.events() if e.device_type == torch.autograd.DeviceType.CUDA]
                    busy = sum(getattr(e, "device_time", None) or getattr(e, "cuda_time", 0.0) or 0.0 for e in kernels)
                    timer.profile = {"gpu_ops": len(kernels), "gpu_busy_ms": round(busy / 1e3, 2),
                                     "profiled_step_wall_ms": round((timer.times[-1] - timer.profile_start) * 1e3, 2)}
                    timer.profiler = None

        self.callback = Callback()

    def record_batch(self, module, args, kwargs):
        ids, mask = kwargs.get("input_ids"), kwargs.get("attention_mask")
        if module.training and ids is not None:
            self.pending.append((ids.shape[0], ids.shape[1], int(mask.sum()) if mask is not None else ids.numel()))


def step_flops(shape: ModelShape, method: str, batches, *, checkpointing: float, lora_r: int, real: bool = False):
    """(model FLOPs, hardware FLOPs) of one optimizer step's micro-batches (batch, length, real tokens).

    Per token: forward 2·N (N = decoder linears + head), backward 4·N for full fine-tuning but 2·N for a
    frozen base plus 6·N_lora for adapters; attention 4·L²·h per sequence and layer forward, twice that
    backward. Hardware FLOPs add the forward checkpointing recomputes (`checkpointing`: the share of
    layers). real=True counts only real tokens (useful work), else the padded ones the GPU computes."""
    n = shape.matmul_params(NUM_LABELS)
    n_lora = 0 if method == "full" else shape.lora_params(lora_r)
    model = hardware = 0.0
    for batch, length, real_tokens in batches:
        tokens, seq = (real_tokens, real_tokens / batch) if real else (batch * length, length)
        attention = 4 * batch * seq * seq * shape.hidden_size * shape.num_layers
        forward = 2 * n * tokens + 2 * n_lora * tokens + attention
        backward = (4 * n * tokens if method == "full" else 2 * n * tokens + 4 * n_lora * tokens) + 2 * attention
        model += forward + backward
        hardware += forward + backward + forward * float(checkpointing)
    return model, hardware


def summarise_steps(timer: StepTimer, warmup: int, shape: ModelShape, method: str, *, checkpointing: float,
                    lora_r: int, peak_tflops: float | None) -> dict:
    """Throughput over the steps after `warmup`, the profiled step and the one after it left out; `steady_*`
    also leaves out each step of a new padded shape (its one-off cost). Per-step times and lengths are kept."""
    durations, batches = np.diff(timer.times), timer.step_batches
    skip = {timer.profiled_index, timer.profiled_index + 1} if timer.profiled_index is not None else set()
    seen, first_of_shape = set(), []
    for step in batches:
        shapes = {(b, l) for b, l, _ in step}
        first_of_shape.append(bool(shapes - seen))
        seen |= shapes
    timed = [k for k in range(len(durations)) if k >= warmup and k not in skip]
    steady = [k for k in timed if not first_of_shape[k]]
    out = {"steps": len(durations), "warmup_steps": warmup, "timed_steps": len(timed), "steady_steps": len(steady),
           "distinct_shapes": len(seen), "step_seconds": [round(float(d), 4) for d in durations],
           "step_padded_lengths": [max((l for _, l, _ in step), default=0) for step in batches]}
    if not timed:
        return out
    secs = float(sum(durations[k] for k in timed))
    examples = sum(b for k in timed for b, _, _ in batches[k])
    real = sum(r for k in timed for _, _, r in batches[k])
    padded = sum(b * l for k in timed for b, l, _ in batches[k])
    flops = [step_flops(shape, method, batches[k], checkpointing=checkpointing, lora_r=lora_r) for k in timed]
    useful = sum(step_flops(shape, method, batches[k], checkpointing=checkpointing, lora_r=lora_r, real=True)[0]
                 for k in timed)
    out.update(examples_per_second=examples / secs, real_tokens_per_second=real / secs, padding_share=1 - real / padded,
               median_step_seconds=float(np.median([durations[k] for k in timed])),
               model_tflops_per_second=sum(m for m, _ in flops) / secs / 1e12,
               hardware_tflops_per_second=sum(h for _, h in flops) / secs / 1e12, useful_tflops_per_second=useful / secs / 1e12)
    if steady:
        out["steady_examples_per_second"] = sum(b for k in steady for b, _, _ in batches[k]) / sum(durations[k] for k in steady)
    if peak_tflops:
        out.update(mfu=out["model_tflops_per_second"] / peak_tflops, hfu=out["hardware_tflops_per_second"] / peak_tflops,
                   useful_mfu=out["useful_tflops_per_second"] / peak_tflops)
    return out
