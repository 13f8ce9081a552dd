"""The benchmark proper: Qwen2.5-shaped classifiers trained through the notebooks' code paths (`modeling.load_model`,
`training.build_trainer`), timed step by step. Sections `env` (versions, GPU, the MFU ceiling), `speed` (each cell's
setups, then the estimator's shape) and `estimator` (that shape only); <out>/<tag>.json is written after each."""
from __future__ import annotations

import json
import math
import os
import shutil
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from transformers.trainer_utils import SaveStrategy

from bench import timing
from bench.timing import MemoryCap, log
from bench.workload import MAIN_CELLS, NUM_LABELS, REAL_MODELS, TINY, build_checkpoint, synthetic_dataset
from qlora_helpers import atomic, defaults, emulation, memory, modeling, offline_models, training
from qlora_helpers.memory import GIB, ModelShape

RECORDED_KNOBS = ("batch_size", "gradient_accumulation", "max_length", "group_by_length", "pad_to_multiple_of",
                  "optimizer", "learning_rate", "compile_layers", "cuda_graphs", "checkpoint_above_tokens", "flat_optimizer")


@dataclass(frozen=True)
class Setup:
    name: str  # the "config" of its results row: "tutorial", "library_default", "lever_..."
    train: training.TrainConfig  # batch, accumulation, max_length, optimizer, rate, compile / graphs
    checkpointing: bool
    lora_dropout: float  # ignored for full fine-tuning
    padded_to_128: bool = False  # every row padded to 128 tokens up front (else batches pad to their longest)
    checkpoint_every: int = 1  # with checkpointing: recompute every layer (1), every other one (2)


def setups(method: str) -> list[Setup]:
    """A tutorial-like recipe, the method's defaults (what the notebooks train), the same with every step-cost lever
    off (the defaults before issue 27), and each lever on top of that: fused fp32 AdamW, compiled decoder layers,
    less or no checkpointing, CUDA graphs, graphs checkpointing only batches a T4 cannot train without it."""
    chosen, base = defaults.for_method(method), training.default_train_config(method)
    ckpt, dropout = chosen.gradient_checkpointing, chosen.lora_dropout
    off = replace(base, cuda_graphs=False, checkpoint_above_tokens=None, flat_optimizer=False,
                  optimizer="paged_adamw_8bit" if method == "qlora" else "adamw_torch")
    tutorial = replace(off, batch_size=8, gradient_accumulation=1, max_length=128, group_by_length=False,
                       pad_to_multiple_of=None)
    found = [Setup("tutorial", tutorial, method == "qlora", 0.05, padded_to_128=True),
             Setup("library_default", base, ckpt, dropout), Setup("levers_off", off, ckpt, dropout)]
    if method == "full":
        return found
    fused = replace(off, optimizer="adamw_torch_fused")
    compiled_fused = replace(fused, compile_layers=True)
    levers = {"fused_adamw": (fused, ckpt, 1), "compiled_layers": (replace(off, compile_layers=True), ckpt, 1)}
    if ckpt:
        levers.update(compiled_fused_adamw=(compiled_fused, True, 1), no_checkpointing=(off, False, 1),
                      half_checkpointing=(off, True, 2), all_half_checkpointing=(compiled_fused, True, 2))
    levers.update(all=(compiled_fused, False, 1), cuda_graphs=(replace(off, cuda_graphs=True), ckpt, 1),
                  cuda_graphs_fused_adamw=(replace(fused, cuda_graphs=True), ckpt, 1))
    if ckpt:
        long_only = memory.tokens_without_checkpointing("7B", method, "T4", batch_size=chosen.batch_size,
                                                        max_length=chosen.max_length)
        levers["cuda_graphs_fused_adamw_ckpt_long"] = (
            replace(fused, cuda_graphs=True, checkpoint_above_tokens=long_only), True, 1)
        levers["default_fused_adamw"] = (replace(base, optimizer="adamw_torch_fused"), True, 1)
        levers["default_per_tensor_8bit"] = (replace(base, flat_optimizer=False), True, 1)  # before flat_optimizer
    return found + [Setup(f"lever_{name}", train, on, dropout, checkpoint_every=every)
                    for name, (train, on, every) in levers.items()]


def estimator_setup(method: str, batch_size: int, seq_len: int, *, over_3b: bool, cpu: bool) -> Setup:
    """The method's defaults at a fixed batch x seq_len, no length grouping; full fine-tuning over 3B
    parameters on a GPU with 8-bit AdamW (a 7B's fp32 AdamW exceeds an H200's 141 GB)."""
    chosen = defaults.for_method(method)
    optimizer = "adamw_bnb_8bit" if method == "full" and over_3b and not cpu else chosen.optimizer
    train = replace(training.default_train_config(method), batch_size=batch_size, max_length=seq_len,
                    optimizer=optimizer, group_by_length=False)
    return Setup("estimator", train, chosen.gradient_checkpointing, chosen.lora_dropout if method != "full" else 0.0)


@dataclass
class Cell:
    """One model x method, loaded; its trainable weights' starting values (on CPU) start every setup."""
    shape: ModelShape
    loaded: modeling.LoadedModel
    load_info: dict  # the results' "loads" entry
    initial_state: dict


def model_of(args, key: str) -> tuple[Path, ModelShape]:
    """The folder and shape of model `key`: real weights (REAL_MODELS), or a random checkpoint of a Qwen2.5
    size (a tiny stand-in on CPU) built once into --models-dir."""
    if key in REAL_MODELS:
        from transformers import AutoConfig

        folder = Path(offline_models.resolve_model_id(REAL_MODELS[key]))
        config = AutoConfig.from_pretrained(folder)
        return folder, ModelShape.from_config(config, REAL_MODELS[key].split(":")[-1])
    shape = (TINY if args.device == "cpu" else memory.QWEN2_5)[key]
    return build_checkpoint(shape, Path(args.models_dir) / shape.name, args.device), shape


def load_cell(args, cap: MemoryCap, key: str, method: str, *, keep_initial: bool = True) -> Cell:
    """A new cell with model `key` loaded for `method`, the allocator measured around the load;
    keep_initial=False for a cell trained once (a 7B's copy of its starting weights is 30 GB)."""
    with cap.loading(lifted=True):
        folder, shape = model_of(args, key)
    cap.start_cell()
    compute_dtype = modeling.choose_compute_dtype(args.device)  # before a lifted cap hides the T4 variable
    before = timing.allocated()
    timing.reset_peak()
    start = time.perf_counter()
    with cap.loading():
        loaded = modeling.load_model(str(folder), method, NUM_LABELS, compute_dtype=compute_dtype)
    dtypes: dict[str, int] = {}  # bytes per kind:dtype, to show whether embeddings stayed 16-bit
    for name, p in loaded.model.named_parameters():
        kind = ("4bit" if modeling.is_packed_4bit(p) else "embedding" if "embed_tokens" in name else
                "trainable" if p.requires_grad else "frozen_other") + ":" + str(p.dtype).replace("torch.", "")
        dtypes[kind] = dtypes.get(kind, 0) + p.numel() * p.element_size()
    info = {"load_seconds": round(time.perf_counter() - start, 2), "footprint_bytes": int(loaded.footprint_bytes),
            "allocated_before_bytes": before, "allocated_after_bytes": timing.allocated() - before,
            "load_peak_bytes": training.peak_memory()[0] - before, "trainable_params": loaded.trainable_params,
            "total_params": loaded.total_params, "param_dtypes": dtypes}
    initial = {n: p.detach().to("cpu", copy=True) for n, p in loaded.model.named_parameters()
               if p.requires_grad and keep_initial}
    return Cell(shape, loaded, info, initial)


def set_checkpointing(model, on: bool, every: int = 1) -> None:
    """Activation checkpointing off, or on for every `every`-th decoder layer (1: all of them)."""
    base = modeling.base_model(model)
    if not on:
        return base.gradient_checkpointing_disable()
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    for index, layer in enumerate(modeling.decoder_layers(base)):
        layer.gradient_checkpointing = index % every == 0


def run_setup(cell: Cell, data, setup: Setup, *, steps: int, warmup: int, cap: MemoryCap, out_dir: Path,
              peak_tflops: float | None = None, profile_step: int | None = None) -> dict:
    """Train `steps` steps of `setup` from the cell's starting weights; its results row (peaks above the cell's
    baseline; status "oom", "nonfinite", or "error" for a lever that cannot run). The model is left as loaded."""
    loaded, method = cell.loaded, cell.loaded.method
    params = dict(loaded.model.named_parameters())
    with torch.no_grad():
        for name, value in cell.initial_state.items():
            params[name].copy_(value)
    set_checkpointing(loaded.model, setup.checkpointing, setup.checkpoint_every)
    for module in loaded.model.modules():  # LoRA dropout (p=0: no dropout module, as peft builds it)
        if method != "full" and isinstance(drop := getattr(module, "lora_dropout", None), torch.nn.ModuleDict):
            for key in list(drop.keys()):
                drop[key] = torch.nn.Dropout(setup.lora_dropout) if setup.lora_dropout > 0 else torch.nn.Identity()
    name = f"{method}:{setup.name}"
    cfg = replace(setup.train, max_steps=steps, output_dir=str(out_dir / name), retry_on_oom=False,
                  save_steps=10**9, logging_steps=min(10, max(1, steps // 4)))
    record = {"name": name, "model": cell.shape.name, "method": method, "gradient_checkpointing": setup.checkpointing,
              "lora_dropout": setup.lora_dropout, "checkpoint_every": setup.checkpoint_every,
              "fixed_padding": setup.padded_to_128, **{knob: getattr(cfg, knob) for knob in RECORDED_KNOBS}}
    timing.free()
    trainer, measure = training.build_trainer(loaded, data, cfg)
    trainer.args.save_strategy = SaveStrategy.NO
    timer = timing.StepTimer(loaded.model, profile_step=profile_step)
    trainer.add_callback(timer.callback)
    start_allocated = timing.allocated()
    timing.reset_peak()
    try:
        trainer.train()
        record["status"] = "ok"
    except torch.OutOfMemoryError as error:
        record.update(status="oom", error=str(error).split("\n")[0][:300])
    except training.NonFiniteLossError as error:
        record.update(status="nonfinite", error=str(error))
    except Exception as error:  # noqa: BLE001 - a lever that cannot run (compile, graphs) is a result too
        if not (cfg.compile_layers or cfg.cuda_graphs):
            raise
        record.update(status="error", error=f"{type(error).__name__}: {str(error)[:500]}")
    finally:
        measure.hook.remove()
        timer.hook.remove()
        for module in loaded.model.modules():  # undo compile_layers: the next setup runs eagerly
            if getattr(module, "_compiled_call_impl", None) is not None:
                module._compiled_call_impl = None
        training.release_training_state(loaded.model)  # graphs, checkpointing limit: the next setup starts clean
    layers, losses = cell.shape.num_layers, [e["loss"] for e in trainer.state.log_history if "loss" in e]
    # peak_reserved_bytes: the allocator's whole reserved peak, the cell's baseline and the graphs' cached pool
    # included (training.peak_reserved): what the T4 cap counts
    record.update(peak_bytes=training.peak_memory()[0] - cap.baseline_bytes, cell_baseline_bytes=cap.baseline_bytes,
                  peak_reserved_bytes=training.peak_reserved(),
                  start_allocated_bytes=start_allocated - cap.baseline_bytes, losses=losses,
                  **({"profile": timer.profile} if timer.profile else {}),
                  **timing.summarise_steps(
                      timer, warmup, cell.shape, method, lora_r=defaults.for_method(method).lora_r, peak_tflops=peak_tflops,
                      checkpointing=math.ceil(layers / setup.checkpoint_every) / layers if setup.checkpointing else 0.0))
    trainer.accelerator.free_memory()
    del trainer, measure, timer
    timing.free()
    loaded.model.zero_grad(set_to_none=True)
    shutil.rmtree(out_dir / name, ignore_errors=True)
    log(f"  {name}: {record['status']}, {record.get('examples_per_second', 0):.1f} ex/s, peak "
        f"{record['peak_bytes'] / GIB:.2f} GiB, losses {[round(v, 3) for v in losses]}")
    return record


def env(args, cap: MemoryCap, results: dict) -> None:
    """The run's environment and, on a GPU, the MFU ceiling: a large fp16 matmul (what the T4 profile computes in)."""
    results["env"] = info = timing.environment()
    if torch.cuda.is_available():
        info.update(gpu=torch.cuda.get_device_name(0), sms=torch.cuda.get_device_properties(0).multi_processor_count)
        a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.float16) for _ in range(2))
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        for repeats, event in ((3, start), (10, end)):  # warm-up, then the timed products
            for _ in range(repeats):
                a @ b
            event.record()
        timing.sync()
        info["fp16_matmul_tflops"] = 10 * 2 * 8192**3 / (start.elapsed_time(end) / 1e3) / 1e12
        del a, b


def speed(args, cap: MemoryCap, results: dict) -> None:
    """Each cell of --cells (default: the three notebooks'): the setups of --only-configs (default: all)."""
    for key, method in [tuple(c.split(":")) for c in args.cells] or MAIN_CELLS:
        measure_cell(args, cap, results, key, method, [s for s in setups(method)
                                                       if s.name in args.only_configs or not args.only_configs])


def estimator(args, cap: MemoryCap, results: dict) -> None:
    """The cells of --cells at the estimator's shape only, uncapped: 7B full and LoRA cannot fit a T4 but are
    measured anyway (still fp16). A cell that fails (out of memory at load, say) is recorded as such."""
    cap.lift()
    for key, method in [tuple(cell.split(":")) for cell in args.cells]:
        try:
            measure_cell(args, cap, results, key, method, [])
        except Exception as error:
            results.setdefault("estimator", []).append(
                {"model": key, "method": method, "status": "error", "error": repr(error)[:500]})


def measure_cell(args, cap: MemoryCap, results: dict, key: str, method: str, timed: list[Setup]) -> None:
    """Load model `key` for `method`, train each of `timed` from the same weights, then the estimator shape."""
    cell = load_cell(args, cap, key, method, keep_initial=bool(timed))
    results.setdefault("loads", {})[f"{cell.shape.name}:{method}"] = cell.load_info
    datasets = {}  # by (max_length, padded to), built once per cell
    for setup in [s for s in timed if args.device != "cpu" or not s.train.cuda_graphs]:  # graphs need a GPU
        length, pad = setup.train.max_length, 128 if setup.padded_to_128 else None
        if (length, pad) not in datasets:
            datasets[length, pad] = synthetic_dataset(args.rows, cell.shape.vocab_size, max_length=length, pad_to=pad)
        # torch.profiler records an early step, except for graphs: a late one, replaying graphs recorded before
        profiled = args.device != "cpu" and setup.name in ("tutorial", "library_default", "lever_cuda_graphs")
        record = run_setup(cell, datasets[length, pad], setup, steps=args.steps, warmup=args.warmup, cap=cap,
                           out_dir=Path(args.work_dir), peak_tflops=results.get("env", {}).get("fp16_matmul_tflops"),
                           profile_step=(args.steps - 3 if setup.train.cuda_graphs is not False else args.warmup + 2) if profiled else None)
        results.setdefault("speed", []).append({**record, "config": setup.name, "profile_kind": args.profile})
        write(args, results)
    results.setdefault("estimator", []).append(estimator_row(args, cap, cell))
    write(args, results)


def estimator_row(args, cap: MemoryCap, cell: Cell) -> dict:
    """A few steps at the estimator's fixed shape: footprint and peak against memory.estimate's (on CPU the peak
    is the process's RSS: not comparable)."""
    shape, method, batch, seq = cell.shape, cell.loaded.method, args.est_batch, args.est_seq
    setup = estimator_setup(method, batch, seq, over_3b=shape.total_params() > 3e9, cpu=args.device == "cpu")
    data = synthetic_dataset(max(batch * (args.est_steps + 1), 64), shape.vocab_size, max_length=seq,
                             fixed_length=seq, seed=1)
    record = run_setup(cell, data, setup, steps=args.est_steps, warmup=1, cap=cap, out_dir=Path(args.work_dir))
    # with checkpointing, the default's limit ("auto") lets micro-batches of up to `limit` tokens skip it
    limit = training.checkpoint_limit(cell.loaded.model, setup.train) if setup.checkpointing else None
    checkpointed = setup.checkpointing and (limit is None or batch * seq > limit)
    est = memory.estimate(shape, method, batch_size=batch, seq_len=seq, gradient_checkpointing=checkpointed,
                          optimizer=setup.train.optimizer, lora_dropout=setup.lora_dropout,
                          compute_dtype=modeling.choose_compute_dtype(args.device).itemsize)
    footprint, peak = cell.load_info["footprint_bytes"], record["peak_bytes"]
    return {"model": shape.name, "method": method, "batch_size": batch, "seq_len": seq, "status": record["status"],
            "optimizer": setup.train.optimizer, "gradient_checkpointing": checkpointed, "checkpoint_above_tokens": limit,
            "lora_dropout": setup.lora_dropout, "measured_footprint_bytes": footprint,
            "estimated_footprint_bytes": est.footprint_bytes, "footprint_error": est.footprint_bytes / footprint - 1,
            "measured_peak_bytes": peak, "estimated_peak_bytes": est.peak_bytes,
            "peak_error": est.peak_bytes / peak - 1 if peak > 0 and args.device != "cpu" else None,
            "estimate": est.as_dict()}


def write(args, results: dict) -> None:
    atomic.write_text(Path(args.out) / f"{args.tag}.json", json.dumps(results, indent=1, default=str))


def main(args) -> dict:
    """Run the sections asked for (a failed one is recorded and the next ones still run); return the results."""
    if args.device == "cpu":
        torch.set_num_threads(1)  # tiny matrices: threads only add contention on a busy 2-core machine
    elif args.profile == "t4":
        os.environ[emulation.ENV_VAR] = "t4"  # fp16 compute (modeling.choose_compute_dtype); results name it
    cap = MemoryCap(emulation.apply_t4_profile(0) if args.profile == "t4" and args.device == "cuda" else None)
    results = {"tag": args.tag, "profile": "cpu" if args.device == "cpu" else args.profile, "args": vars(args),
               "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    for section in args.sections:
        start = time.perf_counter()
        try:
            {"env": env, "speed": speed, "estimator": estimator}[section](args, cap, results)
        except Exception as error:
            traceback.print_exc()
            results.setdefault("errors", []).append({"section": section, "error": repr(error)[:1000]})
        results.setdefault("section_seconds", {})[section] = round(time.perf_counter() - start, 1)
        write(args, results)
    return results
