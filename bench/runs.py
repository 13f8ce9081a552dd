"""Loading one cell (a model x method) and timing training setups on it.

`load_cell` loads a random checkpoint through `qlora_helpers.modeling.load_model`, measuring the
allocator around it, and keeps the trainable weights' starting values; `run_setup` restores them,
applies a `TrainingSetup` (checkpointing, LoRA dropout, Trainer knobs) and trains it for a number of
steps through `qlora_helpers.training.build_trainer` (the notebooks' Trainer), recording speed
(timing.py), peak memory above the cell's baseline (device_memory.py), losses and status.
"""
from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from bench import device_memory
from bench.config import TrainingSetup
from bench.device_memory import MemoryCap
from bench.timing import StepTimer, summarise_steps
from bench.workload import NUM_LABELS, Rows
from qlora_helpers import defaults, modeling, training
from qlora_helpers.memory import GIB, ModelShape


def log(*args) -> None:
    print(f"[{time.strftime('%H:%M:%S')}]", *args, flush=True)


@dataclass
class Cell:
    shape: ModelShape
    loaded: modeling.LoadedModel
    load_info: dict  # what loading measured (the results' "loads" entry)
    initial_state: dict  # trainable parameter name -> its starting value (on CPU), restored before each run

    @property
    def method(self) -> str:
        return self.loaded.method


def load_cell(folder: Path, shape: ModelShape, method: str, compute_dtype: torch.dtype, *,
              keep_initial: bool = True, **kwargs) -> Cell:
    """load_model(folder, method, **kwargs), measuring the allocator before, at its peak during
    loading, and after (bytes). keep_initial: copy the trainable weights to CPU, so that each
    `run_setup` starts from them (for a cell trained once, skip the copy: a 7B's is 30 GB)."""
    device_memory.free()
    before = device_memory.allocated()
    device_memory.reset_peak()
    start = time.perf_counter()
    loaded = modeling.load_model(str(folder), method, NUM_LABELS, compute_dtype=compute_dtype, **kwargs)
    seconds = time.perf_counter() - start
    info = {"load_seconds": round(seconds, 2), "footprint_bytes": int(loaded.footprint_bytes),
            "footprint_after_adapters_bytes": int(_model_footprint(loaded.model)),
            "allocated_before_bytes": before, "allocated_after_bytes": device_memory.allocated() - before,
            "load_peak_bytes": device_memory.peak() - before, "trainable_params": loaded.trainable_params,
            "total_params": loaded.total_params, "param_dtypes": _dtype_summary(loaded.model)}
    initial = {n: p.detach().to("cpu", copy=True) for n, p in loaded.model.named_parameters()
               if p.requires_grad and keep_initial}
    return Cell(shape, loaded, info, initial)


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


def restore_state(model, state: dict) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


def set_dropout(model, p: float) -> None:
    """Swap the LoRA dropout of every adapted module (p=0 is what peft builds for lora_dropout=0)."""
    for module in model.modules():
        drop = getattr(module, "lora_dropout", None)
        if isinstance(drop, torch.nn.ModuleDict):
            for key in list(drop.keys()):
                drop[key] = torch.nn.Dropout(p) if p > 0 else torch.nn.Identity()


def set_checkpointing(model, on: bool, every: int = 1) -> None:
    """Activation checkpointing off, or on for every `every`-th decoder layer (1: all of them)."""
    base = modeling.base_model(model)
    if on:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        for index, layer in enumerate(modeling.decoder_layers(base)):
            layer.gradient_checkpointing = index % every == 0
    else:
        base.gradient_checkpointing_disable()


def uncompile_layers(model) -> None:
    """Undo training.compile_decoder_layers, so that the next setup on this model runs eagerly."""
    for module in model.modules():
        if getattr(module, "_compiled_call_impl", None) is not None:
            module._compiled_call_impl = None


class MemorySnapshot:
    """Record the CUDA allocator's history (every allocation and free, with Python stacks) from the
    start of training until the end of optimizer step `step`, then save it as a gzipped pickle that
    https://pytorch.org/memory_viz reads."""

    def __init__(self, path: Path, step: int = 2, max_entries: int = 200_000):
        from transformers import TrainerCallback

        self.path, self.step = path, step
        torch.cuda.memory._record_memory_history(max_entries=max_entries, stacks="python")
        snapshot = self

        class Dump(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step == snapshot.step:
                    snapshot.save()

        self.callback = Dump()

    def save(self) -> None:
        import gzip
        import pickle

        if self.path is None:
            return
        snapshot = torch.cuda.memory._snapshot()
        torch.cuda.memory._record_memory_history(enabled=None)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with gzip.open(self.path, "wb") as out:
            pickle.dump(snapshot, out)
        log(f"  memory snapshot of steps 1-{self.step}: {self.path}")
        self.path = None


def run_setup(cell: Cell, data: Rows, setup: TrainingSetup, *, steps: int, warmup: int, cap: MemoryCap,
              out_dir: Path, name: str | None = None, peak_tflops: float | None = None,
              profile_step: int | None = None, snapshot_path: Path | None = None) -> dict:
    """Train `steps` optimizer steps of `setup` from the cell's starting weights; return its results row.

    name: the row's "name" (default: method:setup name); peak_tflops: the MFU ceiling (None: no
    MFU); profile_step: the step torch.profiler records (CUDA only). Peaks are bytes above the
    cell's baseline (`cap.baseline_bytes`); snapshot_path: save the allocator's history of the first
    two steps there (CUDA only, MemorySnapshot). Status "oom", "nonfinite", or "error" for a compiled
    setup that fails, instead of raising."""
    loaded, method = cell.loaded, cell.method
    name = name or f"{method}:{setup.name}"
    lora_r = defaults.for_method(method).lora_r
    restore_state(loaded.model, cell.initial_state)
    set_checkpointing(loaded.model, setup.checkpointing, setup.checkpoint_every)
    if method != "full":
        set_dropout(loaded.model, setup.lora_dropout)
    cfg = replace(setup.train, max_steps=steps, output_dir=str(out_dir / name), retry_on_oom=False,
                  save_steps=10**9, logging_steps=min(10, max(1, steps // 4)))
    device_memory.free()
    record = {"name": name, "model": cell.shape.name, "method": method, "batch_size": cfg.batch_size,
              "gradient_accumulation": cfg.gradient_accumulation, "max_length": cfg.max_length,
              "group_by_length": cfg.group_by_length, "pad_to_multiple_of": cfg.pad_to_multiple_of,
              "optimizer": cfg.optimizer, "gradient_checkpointing": setup.checkpointing,
              "lora_dropout": setup.lora_dropout, "fixed_padding": data.fixed_padding,
              "checkpoint_every": setup.checkpoint_every, "compile_layers": cfg.compile_layers,
              "cuda_graphs": cfg.cuda_graphs, "checkpoint_above_tokens": cfg.checkpoint_above_tokens,
              "learning_rate": cfg.learning_rate, "dataset_rows": len(data)}
    trainer, measure = training.build_trainer(loaded, data, cfg)
    from transformers.trainer_utils import SaveStrategy

    trainer.args.save_strategy = SaveStrategy.NO
    timer = StepTimer(loaded.model, profile_step=profile_step)
    trainer.add_callback(timer.callback)
    snapshot = MemorySnapshot(snapshot_path) if snapshot_path and torch.cuda.is_available() else None
    if snapshot:
        trainer.add_callback(snapshot.callback)
    start_allocated = device_memory.allocated()
    device_memory.reset_peak()
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
    except Exception as error:  # noqa: BLE001 - a lever that cannot run (compile, graphs) is a result too
        if not (cfg.compile_layers or cfg.cuda_graphs):
            raise
        record["status"] = "error"
        record["error"] = f"{type(error).__name__}: {str(error)[:500]}"
    finally:
        measure.hook.remove()
        timer.close()
        uncompile_layers(loaded.model)
        training.release_training_state(loaded.model)  # graphs, checkpointing limit: the next setup starts clean
        if snapshot:
            snapshot.save()  # a run that failed before step 2 still leaves its history
    peak = device_memory.peak()
    record["wall_seconds"] = round(time.perf_counter() - start, 2)
    record["peak_bytes"] = peak - cap.baseline_bytes  # this cell's model and training, not leftovers
    record["cell_baseline_bytes"] = cap.baseline_bytes
    record["peak_above_start_bytes"] = peak - start_allocated
    record["start_allocated_bytes"] = start_allocated - cap.baseline_bytes
    if torch.cuda.is_available():
        record["peak_reserved_bytes"] = torch.cuda.max_memory_reserved()
    logged = [e for e in trainer.state.log_history if "loss" in e]
    record["losses"] = [e["loss"] for e in logged]
    record["loss_steps"] = [e["step"] for e in logged]
    record["losses_finite"] = all(math.isfinite(v) for v in record["losses"])
    opt = trainer.optimizer
    record["optimizer_state_tensors"] = sum(len(s) for s in opt.state.values()) if opt is not None else 0
    record["max_padded_length"] = max((l for step in timer.step_batches for _, l, _ in step), default=0)
    layers = cell.shape.num_layers
    recomputed = math.ceil(layers / setup.checkpoint_every) / layers if setup.checkpointing else 0.0
    record.update(summarise_steps(timer, warmup, cell.shape, method, checkpointing=recomputed,
                                  lora_r=lora_r, peak_tflops=peak_tflops))
    if timer.profile:
        record["profile"] = timer.profile
    trainer.accelerator.free_memory()
    del trainer, measure, timer, opt
    device_memory.free()
    loaded.model.zero_grad(set_to_none=True)
    shutil.rmtree(out_dir / name, ignore_errors=True)
    eps = record.get("examples_per_second")
    losses = [round(v, 3) for v in record["losses"]]
    log(f"  {name}: {record['status']}, {eps and round(eps, 1)} ex/s, peak {record['peak_bytes'] / GIB:.2f} GiB, "
        f"steps {record.get('steps')}, losses {losses[:3]}...{losses[-2:]}")
    return record

