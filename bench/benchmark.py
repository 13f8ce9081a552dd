#!/usr/bin/env python3
"""Benchmark full / LoRA / QLoRA training of Qwen2.5 classifiers: footprint, speed, memory, MFU.

Random-weight models of the real Qwen2.5 shapes (qlora_helpers.memory.QWEN2_5: nothing can be
downloaded) are saved to disk and loaded back through `qlora_helpers.modeling.load_model`, so the
real loading path (BitsAndBytesConfig, NF4, double quant, adapters) is what gets measured. Batches
are random token ids whose lengths follow Banking77's token-length histogram under the Qwen2.5
tokenizer (bench/banking77_token_lengths.json: counts only, no text). Labels are the last token id
mod 77, so the loss can fall and a broken run (fp16 overflow, NaN) shows.

Each training configuration runs through `qlora_helpers.training.build_trainer` (the notebooks'
Trainer) for a number of steps; a callback times every step (CUDA-synchronised) and records the
batch shapes, so throughput is measured after warm-up and model-FLOPs utilisation is computed from
the tokens actually processed.

Sections (--sections):
  env        versions, GPU, a 4-bit matmul check, the fp16 matmul rate (the MFU ceiling)
  speed      per method (0.5B full, 1.5B LoRA, 7B QLoRA): tutorial-like vs the kaggle-t4 profile vs
             the library defaults vs faster candidates; the fastest QLoRA candidate under the peak
             limit then trains --long-steps steps (the loss must stay finite)
  upcast     7B QLoRA loaded with upcast_all_to_fp32=True (what prepare_model_for_kbit_training does)
  estimator  the remaining model x method cells at a fixed shape: footprint and peak vs memory.estimate

--profile t4 makes the H200 behave like a 16 GB T4 where that matters: fp16 compute (no bf16),
PyTorch's allocator capped at a T4's usable memory, and no flash / cuDNN attention (a T4 has
neither). Speed on an H200 is still an H200's: see the notes in the written markdown.

--device cpu (what tests/test_bench.py runs) uses tiny shapes and a few steps: it checks the
pipeline end to end, not the numbers.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import shutil
import sys
import time
import traceback
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from qlora_helpers import emulation, memory, modeling, training  # noqa: E402
from qlora_helpers.memory import GIB, ModelShape  # noqa: E402

LENGTHS_FILE = Path(__file__).with_name("banking77_token_lengths.json")
NUM_LABELS = 77
PAD_ID = 0
T4_USABLE_GIB = emulation.T4_USABLE_BYTES / GIB  # 14.5: 15360 MiB on the card, less ~0.5 GiB of CUDA context
PEAK_LIMIT_GIB = 14.0  # the target: a default must peak at or under this
H200_DATASHEET_TFLOPS = 989.4  # dense fp16/bf16, SXM
CAP_FRACTION = 1.0  # the allocator cap in force (set by --profile t4)
CAP_BYTES: int | None = None  # the T4 cap in bytes, applied on top of what earlier cells left allocated
CELL_BASELINE = 0  # bytes allocated before this cell's model was loaded (left over by earlier cells)

# The three notebooks' pairs, and their tiny stand-ins for the CPU mode.
MAIN_CELLS = (("7B", "qlora"), ("0.5B", "full"), ("1.5B", "lora"))
TINY = {
    "0.5B": ModelShape("tiny-0.5B", 64, 160, 2, 4, 2, 2048, True),
    "1.5B": ModelShape("tiny-1.5B", 96, 224, 2, 6, 2, 2048, True),
    "7B": ModelShape("tiny-7B", 128, 320, 2, 8, 4, 2048, False),
}


def log(*args) -> None:
    print(f"[{time.strftime('%H:%M:%S')}]", *args, flush=True)


# Data ----------------------------------------------------------------------------------------
def banking77_lengths() -> tuple[np.ndarray, np.ndarray]:
    table = json.loads(LENGTHS_FILE.read_text())
    counts = {int(k): v for k, v in table["train"].items()}
    lengths = np.array(sorted(counts))
    return lengths, np.array([counts[n] for n in lengths], dtype=float)


class Rows(torch.utils.data.Dataset):
    """A list of tokenized rows (dicts), as the Trainer takes them. Plain torch: the device image has
    no `datasets`, and the Trainer's length grouping reads each row's input_ids length itself."""

    def __init__(self, rows: list[dict], fixed_padding: bool = False):
        self.rows, self.fixed_padding = rows, fixed_padding

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        return self.rows[index]


def synthetic_dataset(n: int, vocab: int, *, max_length: int = 128, pad_to: int | None = None,
                      fixed_length: int | None = None, seed: int = 0) -> Rows:
    """Random token ids with Banking77's length distribution (or all `fixed_length` long, one row
    in 4 shortened so batches still carry a padding mask), label = last id mod 77.
    pad_to: pad every row to this length up front (the tutorial's padding="max_length")."""
    rng = np.random.default_rng(seed)
    if fixed_length:
        lens = np.full(n, fixed_length)
        lens[::4] = rng.integers(max(1, fixed_length // 4), fixed_length, size=len(lens[::4]))
    else:
        lengths, counts = banking77_lengths()
        lens = rng.choice(lengths, size=n, p=counts / counts.sum())
    lens = np.minimum(lens, max_length)
    rows = []
    for length in lens:
        ids = rng.integers(1, vocab, size=int(length)).tolist()
        label = ids[-1] % NUM_LABELS
        mask = [1] * len(ids)
        if pad_to:
            mask += [0] * (pad_to - len(ids))
            ids += [PAD_ID] * (pad_to - len(ids))
        rows.append({"input_ids": ids, "attention_mask": mask, "label": label})
    return Rows(rows, fixed_padding=bool(pad_to))


# Models --------------------------------------------------------------------------------------
def build_checkpoint(shape: ModelShape, folder: Path, device: str, seed: int = 0) -> Path:
    """Save a random Qwen2ForSequenceClassification of `shape` (bf16) and a tiny tokenizer whose
    EOS (the pad token after load_tokenizer) is id 0."""
    from tokenizers import Tokenizer, models as tok_models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForSequenceClassification

    if (folder / "config.json").is_file():
        return folder
    if device != "cpu":
        torch.cuda.set_per_process_memory_fraction(1.0)  # building is not what the T4 cap is about
    config = Qwen2Config(**shape.config_kwargs(), num_labels=NUM_LABELS, pad_token_id=PAD_ID,
                         eos_token_id=PAD_ID, bos_token_id=PAD_ID)
    with torch.device("meta"):
        model = Qwen2ForSequenceClassification(config)
    model = model.to(torch.bfloat16).to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.fill_(1.0)
            elif name.endswith("bias"):
                param.zero_()
            else:
                param.normal_(0.0, 0.02, generator=generator)
    staging = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tok = Tokenizer(tok_models.WordLevel({"<|endoftext|>": PAD_ID, "<unk>": 1}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", unk_token="<unk>").save_pretrained(staging)
    staging.rename(folder)
    del model
    _free()
    if device != "cpu":
        torch.cuda.set_per_process_memory_fraction(CAP_FRACTION)
    return folder


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _allocated() -> int:
    return torch.cuda.memory_allocated() if torch.cuda.is_available() else 0


def _reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak() -> int:
    return torch.cuda.max_memory_allocated() if torch.cuda.is_available() else training.peak_memory()[0]


def start_cell() -> None:
    """Note what earlier cells left allocated (the allocator does not return everything a finished
    Trainer held) and move the T4 cap up by as much, so each cell gets a T4's memory of its own.
    Peaks are reported above this baseline."""
    global CELL_BASELINE, CAP_FRACTION
    _free()
    CELL_BASELINE = _allocated()
    if CAP_BYTES is not None and torch.cuda.is_available():
        total = torch.cuda.get_device_properties(0).total_memory
        CAP_FRACTION = min(1.0, (CAP_BYTES + CELL_BASELINE) / total)
        torch.cuda.set_per_process_memory_fraction(CAP_FRACTION)


def load(folder: Path, method: str, compute_dtype, **kwargs) -> tuple[modeling.LoadedModel, dict]:
    """load_model, measuring the allocator before, at its peak during loading, and after."""
    _free()
    before = _allocated()
    _reset_peak()
    start = time.perf_counter()
    loaded = modeling.load_model(str(folder), method, NUM_LABELS, compute_dtype=compute_dtype, **kwargs)
    seconds = time.perf_counter() - start
    info = {"load_seconds": round(seconds, 2), "footprint_bytes": int(loaded.footprint_bytes),
            "footprint_after_adapters_bytes": int(_model_footprint(loaded.model)),
            "allocated_before_bytes": before, "allocated_after_bytes": _allocated() - before,
            "load_peak_bytes": _peak() - before, "trainable_params": loaded.trainable_params,
            "total_params": loaded.total_params, "param_dtypes": _dtype_summary(loaded.model)}
    return loaded, info


def _model_footprint(model) -> int:
    base = modeling.base_model(model)
    return sum(p.numel() * p.element_size() for p in base.parameters()) + \
        sum(b.numel() * b.element_size() for b in base.buffers())


def _dtype_summary(model) -> dict:
    """Bytes per (kind, dtype): shows whether embeddings stayed 16-bit."""
    out: dict[str, int] = {}
    for name, p in model.named_parameters():
        kind = ("4bit" if modeling.is_packed_4bit(p) else
                "embedding" if "embed_tokens" in name else
                "trainable" if p.requires_grad else "frozen_other")
        key = f"{kind}:{str(p.dtype).replace('torch.', '')}"
        out[key] = out.get(key, 0) + p.numel() * p.element_size()
    return out


def set_dropout(model, p: float) -> None:
    """Swap the LoRA dropout of every adapted module (p=0 is what peft builds for lora_dropout=0)."""
    for module in model.modules():
        drop = getattr(module, "lora_dropout", None)
        if isinstance(drop, torch.nn.ModuleDict):
            for key in list(drop.keys()):
                drop[key] = torch.nn.Dropout(p) if p > 0 else torch.nn.Identity()


def set_checkpointing(model, on: bool) -> None:
    base = modeling.base_model(model)
    if on:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        base.gradient_checkpointing_disable()


# Timing --------------------------------------------------------------------------------------
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


def step_flops(shape: ModelShape, method: str, batches, *, checkpointing: bool, lora_r: int, real: bool = False):
    """(model FLOPs, hardware FLOPs) of one optimizer step's micro-batches.

    Per token: forward 2·N (N = matmul parameters: decoder linears + head), backward 4·N for full
    fine-tuning (activation and weight gradients) but 2·N for a frozen base (activation gradients
    only) plus 6·N_lora for the adapters; attention adds 4·L²·h per sequence and layer forward,
    twice that backward. Hardware FLOPs add the recomputed forward of gradient checkpointing.
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
        hardware += forward + backward + (forward if checkpointing else 0)
    return model, hardware


def summarise_steps(timer: StepTimer, warmup: int, shape: ModelShape, method: str, *, checkpointing: bool,
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


def run_config(loaded, dataset, *, name: str, shape: ModelShape, cfg: training.TrainConfig, steps: int,
               warmup: int, checkpointing: bool, lora_dropout: float, lora_r: int, peak_tflops: float | None,
               initial_state: dict, out_dir: Path, profile_step: int | None = None) -> dict:
    """Train `steps` optimizer steps of `cfg` from the model's initial weights; time and measure."""
    restore_state(loaded.model, initial_state)
    set_checkpointing(loaded.model, checkpointing)
    if loaded.method != "full":
        set_dropout(loaded.model, lora_dropout)
    cfg = replace(cfg, max_steps=steps, output_dir=str(out_dir / name), retry_on_oom=False,
                  save_steps=10**9, logging_steps=min(10, max(1, steps // 4)))
    _free()
    record = {"name": name, "model": shape.name, "method": loaded.method, "batch_size": cfg.batch_size,
              "gradient_accumulation": cfg.gradient_accumulation, "max_length": cfg.max_length,
              "group_by_length": cfg.group_by_length, "pad_to_multiple_of": cfg.pad_to_multiple_of,
              "optimizer": cfg.optimizer, "gradient_checkpointing": checkpointing, "lora_dropout": lora_dropout,
              "fixed_padding": dataset.fixed_padding,
              "learning_rate": cfg.learning_rate, "dataset_rows": len(dataset)}
    trainer, measure = training.build_trainer(loaded, dataset, cfg)
    from transformers.trainer_utils import SaveStrategy

    trainer.args.save_strategy = SaveStrategy.NO
    timer = StepTimer(loaded.model, profile_step=profile_step)
    trainer.add_callback(timer.callback)
    base = _allocated()
    _reset_peak()
    start = time.perf_counter()
    try:
        trainer.train()
        record["status"] = "ok"
    except torch.OutOfMemoryError as error:
        record["status"] = "oom"
        record["error"] = str(error).split("\n")[0][:300]
    except training.NonFiniteLossError as error:
        record["status"] = "nonfinite"
        record["error"] = str(error)
    finally:
        measure.hook.remove()
        timer.close()
    record["wall_seconds"] = round(time.perf_counter() - start, 2)
    record["peak_bytes"] = _peak() - CELL_BASELINE  # this cell's model and training, not leftovers
    record["cell_baseline_bytes"] = CELL_BASELINE
    record["peak_above_start_bytes"] = _peak() - base
    record["start_allocated_bytes"] = base - CELL_BASELINE
    if torch.cuda.is_available():
        record["peak_reserved_bytes"] = torch.cuda.max_memory_reserved()
    record["losses"] = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    record["loss_steps"] = [e["step"] for e in trainer.state.log_history if "loss" in e]
    record["losses_finite"] = all(math.isfinite(v) for v in record["losses"])
    opt = trainer.optimizer
    record["optimizer_state_tensors"] = (sum(len(s) for s in opt.state.values()) if opt is not None else 0)
    record["max_padded_length"] = max((l for step in timer.step_batches for _, l, _ in step), default=0)
    record.update(summarise_steps(timer, warmup, shape, loaded.method, checkpointing=checkpointing,
                                  lora_r=lora_r, peak_tflops=peak_tflops))
    if timer.profile:
        record["profile"] = timer.profile
    try:
        trainer.accelerator.free_memory()
    except Exception:
        pass
    del trainer, measure, timer, opt
    _free()
    loaded.model.zero_grad(set_to_none=True)
    shutil.rmtree(out_dir / name, ignore_errors=True)
    eps = record.get("examples_per_second")
    log(f"  {name}: {record['status']}, {eps and round(eps, 1)} ex/s, peak {record['peak_bytes'] / GIB:.2f} GiB, "
        f"steps {record.get('steps')}, losses {[round(v, 3) for v in record['losses']][:3]}..."
        f"{[round(v, 3) for v in record['losses']][-2:]}")
    return record


def capture_state(model) -> dict:
    return {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}


def restore_state(model, state: dict) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


# Sections ------------------------------------------------------------------------------------
def section_env(args, results: dict) -> None:
    import importlib.metadata as md

    info = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("transformers", "peft", "bitsandbytes", "accelerate", "datasets"):
        try:
            info[name] = md.version(name)
        except md.PackageNotFoundError:
            info[name] = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=torch.cuda.get_device_name(0), gpu_memory_bytes=props.total_memory,
                    capability=list(torch.cuda.get_device_capability(0)), sms=props.multi_processor_count)
        # 4-bit sanity: NF4 round trip and a 4-bit matmul against the dequantized weight.
        import bitsandbytes.functional as F
        import bitsandbytes as bnb

        w = torch.randn(4096, 4096, device="cuda", dtype=torch.float16)
        q, state = F.quantize_4bit(w, quant_type="nf4", compress_statistics=True)
        deq = F.dequantize_4bit(q, state)
        x = torch.randn(64, 4096, device="cuda", dtype=torch.float16)
        out = bnb.matmul_4bit(x, q.t(), quant_state=state)
        ref = x @ deq.t()
        info["nf4_roundtrip_rel_error"] = float((deq - w).norm() / w.norm())
        info["matmul_4bit_rel_error"] = float((out - ref).norm() / ref.norm())
        # The ceiling for MFU: a large fp16 matmul (fp16 is what the T4 profile computes in).
        a = torch.randn(8192, 8192, device="cuda", dtype=torch.float16)
        b = torch.randn(8192, 8192, device="cuda", dtype=torch.float16)
        for _ in range(3):
            a @ b
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(10):
            a @ b
        end.record()
        torch.cuda.synchronize()
        info["fp16_matmul_tflops"] = 10 * 2 * 8192**3 / (start.elapsed_time(end) / 1e3) / 1e12
        del a, b, w, q, deq, x, out, ref
        _free()
    results["env"] = info
    log("env:", json.dumps(info))


def _shapes(args) -> dict[str, ModelShape]:
    return TINY if args.device == "cpu" else memory.QWEN2_5


def _folder(args, key: str) -> Path:
    return build_checkpoint(_shapes(args)[key], Path(args.models_dir) / _shapes(args)[key].name, args.device)


def _compute_dtype(args):
    if args.device == "cpu":
        return torch.float32
    return torch.float16 if args.profile == "t4" else modeling.choose_compute_dtype(args.device)


def _kaggle_profile(method: str) -> dict:
    """The kaggle-t4 profile's knobs for this method's notebook (what notebooks 01-03 run)."""
    try:
        from qlora_helpers.runners import profiles

        stem = {"full": "01_full_precision_baseline", "lora": "02_lora_qwen2.5_1.5b",
                "qlora": "03_qlora_qwen2.5_7b"}[method]
        return profiles.get_profile("kaggle-t4").parameters(stem)
    except Exception:  # the profiles module is optional here
        return {}


def default_lora_dropout() -> float:
    from qlora_helpers.defaults import for_method

    return for_method("lora").lora_dropout


def speed_configs(method: str, args) -> list[dict]:
    """(name, TrainConfig, checkpointing, dropout, padded?) to compare for one method."""
    base = training.default_train_config(method)
    dropout = default_lora_dropout()
    default_ckpt = memory.DEFAULT_CHECKPOINTING[method]
    tutorial = replace(base, batch_size=8, gradient_accumulation=1, max_length=128, group_by_length=False,
                       pad_to_multiple_of=None,
                       optimizer="paged_adamw_8bit" if method == "qlora" else "adamw_torch")
    configs = [dict(name="tutorial", cfg=tutorial, ckpt=method == "qlora", dropout=0.05, pad128=True)]
    prof = _kaggle_profile(method)
    if prof:
        configs.append(dict(name="kaggle_t4_profile", ckpt=default_ckpt, dropout=prof.get("lora_dropout", dropout),
                            cfg=replace(base, batch_size=prof.get("batch_size", base.batch_size),
                                        gradient_accumulation=prof.get("gradient_accumulation", 1),
                                        max_length=prof.get("max_length", base.max_length),
                                        learning_rate=prof.get("learning_rate", base.learning_rate)),
                            pad128=False))
    configs.append(dict(name="library_default", cfg=base, ckpt=default_ckpt, dropout=dropout, pad128=False))
    if method == "full":
        configs += [
            dict(name="b32_fused_adamw", cfg=replace(base, optimizer="adamw_torch_fused"), ckpt=False, dropout=0, pad128=False),
            dict(name="b64_fused_adamw", cfg=replace(base, batch_size=64, optimizer="adamw_torch_fused"), ckpt=False,
                 dropout=0, pad128=False),
        ]
    elif method == "lora":
        configs += [
            dict(name="b32_dropout0", cfg=base, ckpt=False, dropout=0.0, pad128=False),
            dict(name="b64_dropout0", cfg=replace(base, batch_size=64), ckpt=False, dropout=0.0, pad128=False),
        ]
    else:
        configs += [
            dict(name="b32_dropout0", cfg=base, ckpt=True, dropout=0.0, pad128=False),
            dict(name="b64_dropout0", cfg=replace(base, batch_size=64), ckpt=True, dropout=0.0, pad128=False),
            dict(name="b128_dropout0", cfg=replace(base, batch_size=128), ckpt=True, dropout=0.0, pad128=False),
            dict(name="b16_nockpt_dropout0", cfg=replace(base, batch_size=16, max_length=64), ckpt=False,
                 dropout=0.0, pad128=False),
        ]
    if args.only_configs:
        configs = [c for c in configs if c["name"] in args.only_configs]
    return configs


def section_speed(args, results: dict) -> None:
    shapes = _shapes(args)
    dtype = _compute_dtype(args)
    peak_tflops = results.get("env", {}).get("fp16_matmul_tflops")
    runs = results.setdefault("speed", [])
    loads = results.setdefault("loads", {})
    estimator_rows = results.setdefault("estimator", [])
    cells = [tuple(c.split(":")) for c in args.cells] if args.cells else MAIN_CELLS
    for key, method in cells:
        shape = shapes[key]
        log(f"speed: {shape.name} {method}")
        folder = _folder(args, key)
        start_cell()
        loaded, info = load(folder, method, dtype)
        loads[f"{shape.name}:{method}"] = info
        log(f"  loaded in {info['load_seconds']} s: footprint {info['footprint_bytes'] / 1e9:.3f} GB, "
            f"allocated {info['allocated_after_bytes'] / 1e9:.3f} GB, load peak {info['load_peak_bytes'] / 1e9:.3f} GB")
        initial = capture_state(loaded.model)
        rows = args.rows
        dynamic = {}
        padded = None
        best = None
        for spec in speed_configs(method, args):
            cfg = spec["cfg"]
            if spec["pad128"]:
                padded = padded or synthetic_dataset(rows, shape.vocab_size, max_length=128, pad_to=128)
                data = padded
            else:
                data = dynamic.get(cfg.max_length) or synthetic_dataset(rows, shape.vocab_size, max_length=cfg.max_length)
                dynamic[cfg.max_length] = data
            profile_step = args.warmup + 2 if (args.device != "cpu" and spec["name"] in ("tutorial", "library_default")) else None
            record = run_config(loaded, data, name=f"{method}:{spec['name']}", shape=shape, cfg=cfg, steps=args.steps,
                                warmup=args.warmup, checkpointing=spec["ckpt"], lora_dropout=spec["dropout"],
                                lora_r=16, peak_tflops=peak_tflops, initial_state=initial, out_dir=Path(args.work_dir),
                                profile_step=profile_step)
            record["config"] = spec["name"]
            record["profile_kind"] = args.profile
            runs.append(record)
            write_results(args, results)
            fits = record["status"] == "ok" and record["peak_bytes"] <= PEAK_LIMIT_GIB * GIB
            if fits and spec["name"] != "tutorial" and record.get("examples_per_second"):
                if best is None or record["examples_per_second"] > best[0]["examples_per_second"]:
                    best = (record, spec)
        if method == "qlora" and best is not None and args.long_steps:
            record, spec = best
            log(f"  long run of the fastest fitting config {spec['name']}: {args.long_steps} steps")
            long = run_config(loaded, dynamic[spec["cfg"].max_length], name=f"{method}:{spec['name']}:long",
                              shape=shape, cfg=spec["cfg"], steps=args.long_steps, warmup=args.warmup,
                              checkpointing=spec["ckpt"], lora_dropout=spec["dropout"], lora_r=16,
                              peak_tflops=peak_tflops, initial_state=initial, out_dir=Path(args.work_dir))
            long["config"] = spec["name"] + ":long"
            long["profile_kind"] = args.profile
            runs.append(long)
            write_results(args, results)
        # The fixed-shape estimator check for this cell, on the model already loaded.
        estimator_rows.append(estimator_cell(args, loaded, shape, method, info, initial))
        write_results(args, results)
        del loaded, initial
        _free()


def estimator_cell(args, loaded, shape: ModelShape, method: str, info: dict, initial: dict) -> dict:
    """Train a few steps at a fixed shape (batch x seq_len, padded batches) and compare the
    measured footprint and allocator peak with memory.estimate."""
    batch, seq = args.est_batch, args.est_seq
    data = synthetic_dataset(max(batch * (args.est_steps + 1), 64), shape.vocab_size, max_length=seq,
                             fixed_length=seq, seed=1)
    optimizer = memory.DEFAULT_OPTIMIZER[method]
    if method == "full" and shape.total_params() > 3e9 and args.device != "cpu":
        optimizer = "adamw_bnb_8bit"  # 7B full with fp32 AdamW (+ foreach temp) exceeds 141 GB
    ckpt = memory.DEFAULT_CHECKPOINTING[method]
    cfg = replace(training.default_train_config(method), batch_size=batch, max_length=seq, optimizer=optimizer,
                  group_by_length=False)
    dropout = default_lora_dropout() if method != "full" else 0.0
    record = run_config(loaded, data, name=f"{method}:estimator", shape=shape, cfg=cfg, steps=args.est_steps,
                        warmup=1, checkpointing=ckpt, lora_dropout=dropout, lora_r=16, peak_tflops=None,
                        initial_state=initial, out_dir=Path(args.work_dir))
    a = 4 if _compute_dtype(args) == torch.float32 else 2
    est = memory.estimate(shape, method, batch_size=batch, seq_len=seq, gradient_checkpointing=ckpt,
                          optimizer=optimizer, compute_dtype=a, lora_dropout=dropout)
    measured_peak = record["peak_bytes"]  # above what was allocated before this cell's model loaded
    row = {"model": shape.name, "method": method, "batch_size": batch, "seq_len": seq, "optimizer": optimizer,
           "gradient_checkpointing": ckpt, "lora_dropout": dropout, "status": record["status"],
           "measured_footprint_bytes": info["footprint_bytes"], "estimated_footprint_bytes": est.footprint_bytes,
           "footprint_error": est.footprint_bytes / info["footprint_bytes"] - 1,
           "measured_resident_bytes": info["allocated_after_bytes"], "estimated_resident_bytes": est.resident_bytes,
           "measured_peak_bytes": measured_peak, "estimated_peak_bytes": est.peak_bytes,
           "peak_error": est.peak_bytes / measured_peak - 1 if measured_peak > 0 else None,
           "optimizer_state_tensors": record.get("optimizer_state_tensors"),
           "max_padded_length": record.get("max_padded_length"), "estimate": est.as_dict()}
    if args.device == "cpu":
        row["peak_error"] = None  # process RSS on CPU: not comparable
    log(f"  estimator {shape.name} {method}: footprint {info['footprint_bytes'] / 1e9:.3f} GB vs "
        f"{est.footprint_bytes / 1e9:.3f} GB ({row['footprint_error']:+.2%}); peak {measured_peak / GIB:.2f} GiB vs "
        f"{est.peak_bytes / GIB:.2f} GiB ({(row['peak_error'] or 0):+.1%})")
    return row


def section_upcast(args, results: dict) -> None:
    """7B QLoRA with upcast_all_to_fp32=True: footprint, resident bytes and a short training peak."""
    shape = _shapes(args)[args.upcast_model]
    folder = _folder(args, args.upcast_model)
    log("upcast: QLoRA with upcast_all_to_fp32=True")
    start_cell()
    loaded, info = load(folder, "qlora", _compute_dtype(args), upcast_all_to_fp32=True)
    initial = capture_state(loaded.model)
    cfg = training.default_train_config("qlora")
    data = synthetic_dataset(args.rows, shape.vocab_size, max_length=cfg.max_length)
    record = run_config(loaded, data, name="qlora:upcast_all_to_fp32", shape=shape, cfg=cfg,
                        steps=args.upcast_steps, warmup=args.warmup, checkpointing=True,
                        lora_dropout=default_lora_dropout(), lora_r=16,
                        peak_tflops=results.get("env", {}).get("fp16_matmul_tflops"), initial_state=initial,
                        out_dir=Path(args.work_dir))
    results["upcast"] = {"load": info, "run": record}
    write_results(args, results)
    del loaded, initial
    _free()


def section_estimator(args, results: dict) -> None:
    """The model x method cells not measured in the speed section, at the fixed estimator shape."""
    shapes = _shapes(args)
    dtype = _compute_dtype(args)
    rows = results.setdefault("estimator", [])
    done = {(r["model"], r["method"]) for r in rows}
    if args.profile == "t4" and torch.cuda.is_available():
        global CAP_FRACTION, CAP_BYTES
        CAP_FRACTION, CAP_BYTES = 1.0, None  # 7B full/LoRA do not fit a T4: measure them anyway (fp16)
        torch.cuda.set_per_process_memory_fraction(1.0)
    for key in ("0.5B", "1.5B", "7B"):
        for method in ("full", "lora", "qlora"):
            shape = shapes[key]
            if (shape.name, method) in done or (args.cells and f"{key}:{method}" not in args.cells):
                continue
            log(f"estimator: {shape.name} {method}")
            try:
                folder = _folder(args, key)
                start_cell()
                loaded, info = load(folder, method, dtype)
                results.setdefault("loads", {})[f"{shape.name}:{method}"] = info
                initial = capture_state(loaded.model) if method != "full" else {}
                rows.append(estimator_cell(args, loaded, shape, method, info, initial))
            except Exception as error:
                log(f"  failed: {error!r}")
                rows.append({"model": shape.name, "method": method, "status": "error", "error": repr(error)[:500]})
            write_results(args, results)
            loaded = initial = None
            _free()


def section_build(args, results: dict) -> None:
    """Save the random checkpoints up front, timing each (the other sections reuse them)."""
    for key in [k for k in args.build.split(",") if k]:
        start = time.perf_counter()
        folder = _folder(args, key)
        size = sum(f.stat().st_size for f in folder.iterdir())
        results.setdefault("build", {})[key] = {"seconds": round(time.perf_counter() - start, 1), "bytes": size}
        log(f"built {folder} ({size / 1e9:.2f} GB) in {time.perf_counter() - start:.1f} s")


def section_probe(args, results: dict) -> None:
    """Activation memory by hand (no Trainer): one autocast forward + backward per shape, measuring
    what the forward leaves allocated (saved activations) and the peaks, against memory.estimate."""
    shapes = _shapes(args)
    dtype = _compute_dtype(args)
    a = 4 if dtype == torch.float32 else 2
    rows = results.setdefault("probe", [])
    cells = args.probe_cells or ["0.5B:full", "0.5B:lora", "0.5B:qlora"]
    device = "cuda" if args.device != "cpu" else "cpu"
    for cell in cells:
        key, method = cell.split(":")
        shape = shapes[key]
        loaded, info = load(_folder(args, key), method, dtype)
        model = loaded.model
        model.train()
        for ckpt in (False, True):
            for dropout in ((0.05, 0.0) if method != "full" else (0.0,)):
                for batch, seq in ((8, 64), (16, 64)):
                    set_checkpointing(model, ckpt)
                    if method != "full":
                        set_dropout(model, dropout)
                    data = synthetic_dataset(batch, shape.vocab_size, max_length=seq, fixed_length=seq, seed=2)
                    ids = torch.tensor([r["input_ids"] + [PAD_ID] * (seq - len(r["input_ids"])) for r in data.rows], device=device)
                    mask = torch.tensor([r["attention_mask"] + [0] * (seq - len(r["attention_mask"])) for r in data.rows], device=device)
                    labels = torch.tensor([r["label"] for r in data.rows], device=device)
                    _free()
                    base = _allocated()
                    _reset_peak()
                    with torch.autocast(device, dtype=torch.float16, enabled=device == "cuda"):
                        out = model(input_ids=ids, attention_mask=mask, labels=labels)
                    after_forward = _allocated() - base
                    forward_peak = _peak() - base
                    out.loss.backward()
                    backward_peak = _peak() - base
                    after_backward = _allocated() - base
                    del out
                    model.zero_grad(set_to_none=True)
                    est = memory.estimate(shape, method, batch_size=batch, seq_len=seq, gradient_checkpointing=ckpt,
                                          lora_dropout=dropout, compute_dtype=a)
                    row = {"model": shape.name, "method": method, "checkpointing": ckpt, "lora_dropout": dropout,
                           "batch_size": batch, "seq_len": seq, "after_forward_bytes": after_forward,
                           "forward_peak_bytes": forward_peak, "backward_peak_bytes": backward_peak,
                           "after_backward_bytes": after_backward,
                           "measured_per_token_layer": after_forward / (batch * seq) / shape.num_layers,
                           "estimated_per_token_layer": est.per_token_layer_bytes,
                           "estimated_activation_bytes": est.activation_bytes,
                           "estimated_autocast_cache_bytes": est.autocast_cache_bytes,
                           "estimated_transient_bytes": est.transient_bytes}
                    rows.append(row)
                    log(f"  probe {shape.name} {method} ckpt={ckpt} p={dropout} {batch}x{seq}: after fwd "
                        f"{after_forward / 2**20:.0f} MiB (est act {est.activation_bytes / 2**20:.0f} + cache "
                        f"{est.autocast_cache_bytes / 2**20:.0f}), fwd peak {forward_peak / 2**20:.0f}, bwd peak "
                        f"{backward_peak / 2**20:.0f} MiB, after bwd {after_backward / 2**20:.0f} MiB")
        write_results(args, results)
        del loaded, model
        _free()


# Output --------------------------------------------------------------------------------------
def write_results(args, results: dict) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{args.tag}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1, default=str))
    tmp.replace(path)
    (out / f"{args.tag}.md").write_text(markdown(results))


def _f(value, fmt="{:.1f}"):
    return "-" if value is None else fmt.format(value)


def markdown(results: dict) -> str:
    env = results.get("env", {})
    lines = [f"# Benchmark `{results.get('tag')}`", "",
             f"Hardware: {env.get('gpu', 'CPU')}; torch {env.get('torch')}, transformers {env.get('transformers')}, "
             f"peft {env.get('peft')}, bitsandbytes {env.get('bitsandbytes')}. Profile: {results.get('profile')}"
             + (f" (fp16, allocator capped at {T4_USABLE_GIB} GiB, no flash/cuDNN attention)" if results.get("profile") == "t4" else "")
             + f". fp16 matmul ceiling measured: {_f(env.get('fp16_matmul_tflops'))} TFLOP/s.", ""]
    speed = results.get("speed", [])
    if speed:
        lines += ["## Training speed and memory", "",
                  "| run | batch x accum | padding | ckpt | dropout | optimizer | ex/s | real tok/s | vs tutorial | "
                  "peak GiB | padding share | MFU | HFU | useful MFU | status |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        tutorial = {r["method"]: r.get("examples_per_second") for r in speed if r["config"] == "tutorial"}
        for r in speed:
            eps = r.get("examples_per_second")
            ratio = eps / tutorial[r["method"]] if eps and tutorial.get(r["method"]) else None
            pad = "128 fixed" if r.get("fixed_padding") else f"dynamic /8, max {r['max_length']}"
            lines.append(
                f"| {r['model']} {r['config']} | {r['batch_size']} x {r['gradient_accumulation']} | {pad} | "
                f"{'on' if r['gradient_checkpointing'] else 'off'} | {r['lora_dropout'] if r['method'] != 'full' else '-'} | "
                f"{r['optimizer']} | {_f(eps)} | {_f(r.get('real_tokens_per_second'), '{:.0f}')} | "
                f"{_f(ratio, '{:.2f}x')} | {r['peak_bytes'] / GIB:.2f} | {_f(r.get('padding_share'), '{:.0%}')} | "
                f"{_f(r.get('mfu'), '{:.1%}')} | {_f(r.get('hfu'), '{:.1%}')} | {_f(r.get('useful_mfu'), '{:.1%}')} | "
                f"{r['status']} |")
        lines.append("")
        profiled = [r for r in speed if r.get("profile") and "gpu_ops" in r["profile"]]
        if profiled:
            lines += ["Profiled steps (one step each, torch.profiler):", "",
                      "| run | GPU ops per step | GPU busy ms | step ms (profiled) | GPU busy share |", "| --- | --- | --- | --- | --- |"]
            for r in profiled:
                p = r["profile"]
                lines.append(f"| {r['model']} {r['config']} | {p['gpu_ops']} | {p['gpu_busy_ms']} | "
                             f"{p['profiled_step_wall_ms']} | {p['gpu_busy_ms'] / p['profiled_step_wall_ms']:.0%} |")
            lines.append("")
    loads = results.get("loads", {})
    if loads:
        lines += ["## Loading", "", "| model:method | footprint GB | allocated after load GB | load peak GB | load s | "
                  "trainable params |", "| --- | --- | --- | --- | --- | --- |"]
        for key, info in loads.items():
            lines.append(f"| {key} | {info['footprint_bytes'] / 1e9:.3f} | {info['allocated_after_bytes'] / 1e9:.3f} | "
                         f"{info['load_peak_bytes'] / 1e9:.3f} | {info['load_seconds']} | {info['trainable_params']:,} |")
        lines.append("")
    up = results.get("upcast")
    if up:
        info, run = up["load"], up["run"]
        lines += ["## QLoRA with upcast_all_to_fp32=True", "",
                  f"footprint after adapters {info['footprint_after_adapters_bytes'] / 1e9:.3f} GB, allocated after load "
                  f"{info['allocated_after_bytes'] / 1e9:.3f} GB, training peak {run['peak_bytes'] / GIB:.2f} GiB, "
                  f"{_f(run.get('examples_per_second'))} ex/s; dtypes: {info['param_dtypes']}", ""]
    est = results.get("estimator", [])
    if est:
        lines += ["## Estimator (qlora_helpers.memory) vs measured", "",
                  "| model | method | batch x seq | optimizer | ckpt | footprint GB (meas / est / err) | "
                  "peak GiB (meas / est / err) |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for r in est:
            if r.get("status") == "error":
                lines.append(f"| {r['model']} | {r['method']} | error: {r.get('error', '')[:80]} | | | | |")
                continue
            lines.append(
                f"| {r['model']} | {r['method']} | {r['batch_size']} x {r['seq_len']} | {r['optimizer']} | "
                f"{'on' if r['gradient_checkpointing'] else 'off'} | {r['measured_footprint_bytes'] / 1e9:.3f} / "
                f"{r['estimated_footprint_bytes'] / 1e9:.3f} / {r['footprint_error']:+.2%} | "
                f"{r['measured_peak_bytes'] / GIB:.2f} / {r['estimated_peak_bytes'] / GIB:.2f} / "
                f"{_f(r.get('peak_error'), '{:+.1%}')} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def print_ratios(results: dict) -> None:
    speed = results.get("speed", [])
    tutorial = {r["method"]: r.get("examples_per_second") for r in speed if r["config"] == "tutorial"}
    print("\nexamples/s relative to the tutorial-like configuration (same run, same profile):")
    for r in speed:
        eps, base = r.get("examples_per_second"), tutorial.get(r["method"])
        ratio = f"{eps / base:.2f}x" if eps and base else "-"
        print(f"  {r['model']:>14} {r['config']:<28} {_f(eps):>8} ex/s  {ratio:>7}  peak {r['peak_bytes'] / GIB:6.2f} GiB"
              f"  MFU {_f(r.get('mfu'), '{:.1%}')}  {r['status']}")
    for r in results.get("estimator", []):
        if r.get("status") != "error":
            print(f"  estimator {r['model']:>14} {r['method']:<6} footprint {r['footprint_error']:+.2%}  "
                  f"peak {_f(r.get('peak_error'), '{:+.1%}')}")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--profile", choices=("t4", "native"), default="t4")
    parser.add_argument("--sections", default="env,speed,upcast,estimator")
    parser.add_argument("--cells", default="", help="only these model:method cells, e.g. 7B:qlora,0.5B:full")
    parser.add_argument("--only-configs", default="", help="only these speed configs (names)")
    parser.add_argument("--probe-cells", default="", help="model:method cells for the probe section")
    parser.add_argument("--upcast-model", default="7B")
    parser.add_argument("--build", default="", help="models to build (and time) in the build section, e.g. 1.5B,7B")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--long-steps", type=int, default=None)
    parser.add_argument("--upcast-steps", type=int, default=None)
    parser.add_argument("--rows", type=int, default=None)
    parser.add_argument("--est-batch", type=int, default=16)
    parser.add_argument("--est-seq", type=int, default=64)
    parser.add_argument("--est-steps", type=int, default=None)
    parser.add_argument("--out", default=str(REPO / "bench" / "results"))
    parser.add_argument("--tag", default=None)
    parser.add_argument("--models-dir", default="/tmp/qlora_bench_models")
    parser.add_argument("--work-dir", default="/tmp/qlora_bench_runs")
    args = parser.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    cpu = args.device == "cpu"
    defaults = dict(steps=(4, 25), warmup=(1, 3), long_steps=(6, 200), upcast_steps=(3, 15), rows=(400, 10003),
                    est_steps=(3, 6))
    for name, (cpu_value, gpu_value) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, cpu_value if cpu else gpu_value)
    if cpu:
        args.est_batch, args.est_seq = min(args.est_batch, 8), min(args.est_seq, 32)
    args.tag = args.tag or (f"cpu_smoke" if cpu else f"h200_{args.profile}")
    args.cells = [c for c in args.cells.split(",") if c]
    args.only_configs = [c for c in args.only_configs.split(",") if c]
    args.probe_cells = [c for c in args.probe_cells.split(",") if c]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if cpu:
        torch.set_num_threads(1)  # tiny matrices: threads only add contention on a busy 2-core machine
    elif args.profile == "t4":
        global CAP_FRACTION, CAP_BYTES
        CAP_BYTES = emulation.apply_t4_profile(0)  # the allocator cap; no flash/cuDNN attention, no TF32
        CAP_FRACTION = min(1.0, CAP_BYTES / torch.cuda.get_device_properties(0).total_memory)
    results = {"tag": args.tag, "profile": "cpu" if cpu else args.profile, "device": args.device,
               "args": {k: v for k, v in vars(args).items()}, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    sections = [s for s in args.sections.split(",") if s]
    for name in sections:
        func = {"env": section_env, "speed": section_speed, "upcast": section_upcast,
                "estimator": section_estimator, "probe": section_probe, "build": section_build}[name]
        start = time.perf_counter()
        try:
            func(args, results)
        except Exception as error:
            log(f"section {name} failed: {error!r}")
            traceback.print_exc()
            results.setdefault("errors", []).append({"section": name, "error": repr(error)[:1000]})
        results.setdefault("section_seconds", {})[name] = round(time.perf_counter() - start, 1)
        write_results(args, results)
    print_ratios(results)
    return results


if __name__ == "__main__":
    main()
