"""Timing a training run: per-step wall time, batch shapes, throughput and model-FLOPs utilisation.

`StepTimer` hooks into the Trainer (a callback, CUDA-synchronised at every optimizer step) and the
model (a forward pre-hook that records each micro-batch's shape and real tokens), and can profile
one step with torch.profiler. `summarise_steps` turns what it recorded into examples/s, real and
padded tokens/s and, with `step_flops`, MFU / HFU against a measured fp16 matmul ceiling.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from bench.workload import NUM_LABELS
from qlora_helpers.memory import ModelShape


class StepTimer:
    """Trainer callback + forward pre-hook: wall time at the end of every optimizer step (after a
    CUDA sync) and the (batch, padded length, real tokens) of every micro-batch."""

    def __init__(self, model, profile_step: int | None = None):
        from transformers import TrainerCallback

        timer = self

        class _Callback(TrainerCallback):
            def on_train_begin(self, args, state, control, **kw):
                timer._sync()
                timer.times.append(time.perf_counter())

            def on_step_begin(self, args, state, control, **kw):
                if timer.profile_step is not None and state.global_step == timer.profile_step:
                    timer.profiled_index = len(timer.step_batches)
                    timer._start_profile()

            def on_step_end(self, args, state, control, **kw):
                timer._sync()
                timer.times.append(time.perf_counter())
                timer.step_batches.append(timer.pending)
                timer.pending = []
                if timer.profiler is not None:
                    timer._stop_profile()

        self.callback = _Callback()
        self.times: list[float] = []
        self.step_batches: list[list[tuple[int, int, int]]] = []
        self.pending: list[tuple[int, int, int]] = []
        self.profile_step = profile_step
        self.profiled_index: int | None = None  # this step and the next carry profiler overhead
        self.profiler = None
        self.profile: dict | None = None
        self.hook = model.register_forward_pre_hook(self._record, with_kwargs=True)

    @staticmethod
    def _sync():
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def _record(self, module, args, kwargs):
        ids = kwargs.get("input_ids")
        if module.training and ids is not None:
            mask = kwargs.get("attention_mask")
            real = int(mask.sum()) if mask is not None else ids.numel()
            self.pending.append((int(ids.shape[0]), int(ids.shape[1]), real))

    def _start_profile(self):
        if not torch.cuda.is_available():
            return
        self._sync()
        self.profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                           torch.profiler.ProfilerActivity.CUDA])
        self.profiler.__enter__()
        self._profile_start = time.perf_counter()

    def _stop_profile(self):
        self._sync()
        wall = time.perf_counter() - self._profile_start
        self.profiler.__exit__(None, None, None)
        kernels, busy = 0, 0.0
        try:
            for event in self.profiler.events():
                if event.device_type == torch.autograd.DeviceType.CUDA:
                    kernels += 1
                    busy += getattr(event, "device_time", None) or getattr(event, "cuda_time", 0.0) or 0.0
        except Exception as error:  # profiler API drift: keep the run
            self.profile = {"error": repr(error)}
        else:
            self.profile = {"gpu_ops": kernels, "gpu_busy_ms": round(busy / 1e3, 2),
                            "profiled_step_wall_ms": round(wall * 1e3, 2)}
        self.profiler = None

    def close(self):
        self.hook.remove()


def step_flops(shape: ModelShape, method: str, batches, *, checkpointing: float, lora_r: int, real: bool = False):
    """(model FLOPs, hardware FLOPs) of one optimizer step's micro-batches.

    Per token: forward 2·N (N = matmul parameters: decoder linears + head), backward 4·N for full
    fine-tuning (activation and weight gradients) but 2·N for a frozen base (activation gradients
    only) plus 6·N_lora for the adapters; attention adds 4·L²·h per sequence and layer forward,
    twice that backward. Hardware FLOPs add the recomputed forward of gradient checkpointing;
    `checkpointing` is the share of layers recomputed (True: all, False: none, 0.5: every other).
    real=True counts only the real tokens (useful work), padded ones are what the GPU computes.
    """
    n = shape.matmul_params(NUM_LABELS)
    n_lora = 0 if method == "full" else shape.lora_params(lora_r)
    h, layers = shape.hidden_size, shape.num_layers
    model = hardware = 0.0
    for batch, length, real_tokens in batches:
        if real:
            tokens, seq = real_tokens, real_tokens / batch
        else:
            tokens, seq = batch * length, length
        attention_fwd = 4 * batch * seq * seq * h * layers
        forward = 2 * n * tokens + 2 * n_lora * tokens + attention_fwd
        backward = (4 * n * tokens if method == "full" else 2 * n * tokens + 4 * n_lora * tokens) + 2 * attention_fwd
        model += forward + backward
        hardware += forward + backward + forward * float(checkpointing)
    return model, hardware


def summarise_steps(timer: StepTimer, warmup: int, shape: ModelShape, method: str, *, checkpointing: float,
                    lora_r: int, peak_tflops: float | None) -> dict:
    """Throughput over the optimizer steps after `warmup` (the profiled step and the one after it,
    which pays the profiler's teardown, left out). `steady_*` also leaves out each step whose padded
    shape was new, to show the one-off cost of a new shape."""
    durations = np.diff(timer.times)
    batches = timer.step_batches
    skip = set()
    if timer.profiled_index is not None:
        skip = {timer.profiled_index, timer.profiled_index + 1}
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

    def totals(ks):
        secs = float(sum(durations[k] for k in ks))
        examples = sum(b for k in ks for b, _, _ in batches[k])
        real = sum(r for k in ks for _, _, r in batches[k])
        padded = sum(b * l for k in ks for b, l, _ in batches[k])
        return secs, examples, real, padded

    secs, examples, real, padded = totals(timed)
    mf = hf = mf_real = 0.0
    for k in timed:
        m, h = step_flops(shape, method, batches[k], checkpointing=checkpointing, lora_r=lora_r)
        mr, _ = step_flops(shape, method, batches[k], checkpointing=checkpointing, lora_r=lora_r, real=True)
        mf, hf, mf_real = mf + m, hf + h, mf_real + mr
    out.update({
        "examples_per_second": examples / secs, "real_tokens_per_second": real / secs,
        "padded_tokens_per_second": padded / secs, "padding_share": 1 - real / padded,
        "median_step_seconds": float(np.median([durations[k] for k in timed])),
        "mean_examples_per_step": examples / len(timed), "mean_padded_length": padded / examples,
        "model_tflops_per_second": mf / secs / 1e12, "hardware_tflops_per_second": hf / secs / 1e12,
        "useful_tflops_per_second": mf_real / secs / 1e12, "model_gflops_per_example": mf / examples / 1e9,
    })
    if steady:
        s_secs, s_examples, _, _ = totals(steady)
        out["steady_examples_per_second"] = s_examples / s_secs
    firsts = [float(durations[k]) for k in timed if first_of_shape[k]]
    if firsts and steady:
        out["new_shape_step_seconds_median"] = float(np.median(firsts))
        out["same_shape_step_seconds_median"] = float(np.median([durations[k] for k in steady]))
    if peak_tflops:
        out["mfu"] = out["model_tflops_per_second"] / peak_tflops
        out["hfu"] = out["hardware_tflops_per_second"] / peak_tflops
        out["useful_mfu"] = out["useful_tflops_per_second"] / peak_tflops
    return out
