"""The benchmark's sections, each a function of the `Session` that fills and writes its results.

  env        versions, GPU, commit, a 4-bit matmul check, the fp16 matmul rate (the MFU ceiling)
  build      save the random checkpoints up front, timing each (the other sections reuse them)
  speed      per cell: the setups of config.speed_setups; the fastest QLoRA setup under the peak
             limit then trains --long-steps steps (the loss must stay finite); then the cell's
             estimator row on the model already loaded
  upcast     QLoRA loaded with upcast_all_to_fp32=True (what prepare_model_for_kbit_training does)
  estimator  the remaining model x method cells at a fixed shape: footprint and peak vs memory.estimate
  probe      activation memory by hand (one forward + backward, no Trainer) against memory.estimate
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from bench import device_memory, report
from bench.config import Options, TrainingSetup, default_setup, estimator_setup, speed_setups
from bench.device_memory import MemoryCap
from bench.runs import Cell, load_cell, log, run_setup, set_checkpointing, set_dropout
from bench.workload import MAIN_CELLS, REAL_MODELS, TINY, build_checkpoint, synthetic_dataset
from qlora_helpers import memory, modeling, offline_models
from qlora_helpers.memory import GIB, ModelShape
from qlora_helpers.notebook.results import code_commit, hardware, library_versions

PEAK_LIMIT_GIB = 14.0  # the target: a setup must peak at or under this to count as fitting a T4


@dataclass
class Session:
    """One benchmark run: what was asked, the allocator cap, and the results dict it fills."""
    options: Options
    cap: MemoryCap
    results: dict

    def write(self) -> None:
        report.write_results(self.options.out, self.options.tag, self.results)

    def shape(self, key: str) -> ModelShape:
        """The shape of model `key`: a Qwen2.5 size (a tiny stand-in on CPU) or a REAL_MODELS key."""
        if key in REAL_MODELS:
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(self.checkpoint(key))
            shape = ModelShape.from_config(config, REAL_MODELS[key].split(":")[-1])
            return replace(shape, qkv_bias=getattr(config, "attention_bias", False))
        return (TINY if self.options.cpu else memory.QWEN2_5)[key]

    @property
    def compute_dtype(self) -> torch.dtype:
        """fp32 on CPU, fp16 when emulating a T4, else the GPU's (modeling.choose_compute_dtype)."""
        return modeling.choose_compute_dtype(self.options.device)

    @property
    def peak_tflops(self) -> float | None:
        """The fp16 matmul rate the env section measured (the MFU ceiling), if it ran."""
        return self.results.get("env", {}).get("fp16_matmul_tflops")

    def checkpoint(self, key: str) -> Path:
        """The random checkpoint of model `key` ("0.5B", "1.5B", "7B"), built (uncapped) if missing, or
        the folder of a REAL_MODELS key's real weights (converted once, offline_models.py)."""
        if key in REAL_MODELS:
            return Path(offline_models.resolve_model_id(REAL_MODELS[key]))
        shape = self.shape(key)
        with self.cap.lifted():
            return build_checkpoint(shape, Path(self.options.models_dir) / shape.name, self.options.device)

    def load(self, key: str, method: str, *, keep_initial: bool = True, **kwargs) -> Cell:
        """Start a new cell (baseline and cap, device_memory.py) and load model `key` for `method`;
        keep_initial=False for a cell trained once (no copy of its trainable weights on CPU)."""
        folder = self.checkpoint(key)
        self.cap.start_cell()
        compute_dtype = self.compute_dtype  # read before a lifted cap hides the T4 profile's variable
        with self.cap.loading():
            return load_cell(folder, self.shape(key), method, compute_dtype, keep_initial=keep_initial, **kwargs)

    def run(self, cell: Cell, data, setup: TrainingSetup, *, steps: int, warmup: int, **kwargs) -> dict:
        return run_setup(cell, data, setup, steps=steps, warmup=warmup, cap=self.cap,
                         out_dir=Path(self.options.work_dir), **kwargs)


def env(session: Session) -> None:
    info = library_versions()
    info.update(commit=code_commit(), hardware=hardware())
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=torch.cuda.get_device_name(0), gpu_memory_bytes=props.total_memory,
                    capability=list(torch.cuda.get_device_capability(0)), sms=props.multi_processor_count)
        # 4-bit sanity: NF4 round trip and a 4-bit matmul against the dequantized weight.
        import bitsandbytes as bnb
        import bitsandbytes.functional as F

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
        device_memory.free()
    session.results["env"] = info
    log("env:", json.dumps(info))


def build(session: Session) -> None:
    for key in session.options.build:
        start = time.perf_counter()
        folder = session.checkpoint(key)
        size = sum(f.stat().st_size for f in folder.iterdir())
        session.results.setdefault("build", {})[key] = {"seconds": round(time.perf_counter() - start, 1), "bytes": size}
        log(f"built {folder} ({size / 1e9:.2f} GB) in {time.perf_counter() - start:.1f} s")


def speed(session: Session) -> None:
    opts, results = session.options, session.results
    runs = results.setdefault("speed", [])
    loads = results.setdefault("loads", {})
    estimator_rows = results.setdefault("estimator", [])
    cells = [tuple(c.split(":")) for c in opts.cells] if opts.cells else MAIN_CELLS
    for key, method in cells:
        shape = session.shape(key)
        log(f"speed: {shape.name} {method}")
        cell = session.load(key, method)
        info = loads[f"{shape.name}:{method}"] = cell.load_info
        log(f"  loaded in {info['load_seconds']} s: footprint {info['footprint_bytes'] / 1e9:.3f} GB, "
            f"allocated {info['allocated_after_bytes'] / 1e9:.3f} GB, load peak {info['load_peak_bytes'] / 1e9:.3f} GB")
        padded, dynamic = None, {}  # the datasets, built once per cell: padded to 128, and per max_length
        best: tuple[dict, TrainingSetup] | None = None
        for setup in speed_setups(method, opts.only_configs):
            if opts.cpu and setup.train.cuda_graphs:
                log(f"  {method}:{setup.name}: skipped (CUDA graphs need a GPU)")
                continue
            if setup.padded_to_128:
                padded = padded or synthetic_dataset(opts.rows, shape.vocab_size, max_length=128, pad_to=128)
                data = padded
            else:
                length = setup.train.max_length
                if length not in dynamic:
                    dynamic[length] = synthetic_dataset(opts.rows, shape.vocab_size, max_length=length)
                data = dynamic[length]
            profiled = not opts.cpu and setup.name in ("tutorial", "library_default", "lever_cuda_graphs")
            snapshot = (Path(opts.out) / f"{opts.tag}_{shape.name}_{setup.name}.snapshot.pickle.gz"
                        if setup.name in opts.memory_snapshot else None)
            record = session.run(cell, data, setup, steps=opts.steps, warmup=opts.warmup,
                                 peak_tflops=session.peak_tflops, snapshot_path=snapshot,
                                 profile_step=(profile_at(setup, opts) if profiled and not snapshot else None))
            record.update(config=setup.name, profile_kind=opts.profile)
            runs.append(record)
            session.write()
            fits = record["status"] == "ok" and record["peak_bytes"] <= PEAK_LIMIT_GIB * GIB
            if fits and setup.name != "tutorial" and record.get("examples_per_second"):
                if best is None or record["examples_per_second"] > best[0]["examples_per_second"]:
                    best = (record, setup)
        if method == "qlora" and best is not None and opts.long_steps:
            setup = best[1]
            log(f"  long run of the fastest fitting config {setup.name}: {opts.long_steps} steps")
            long = session.run(cell, dynamic[setup.train.max_length], setup, steps=opts.long_steps,
                               warmup=opts.warmup, name=f"{method}:{setup.name}:long", peak_tflops=session.peak_tflops)
            long.update(config=setup.name + ":long", profile_kind=opts.profile)
            runs.append(long)
            session.write()
        estimator_rows.append(estimator_row(session, cell))
        session.write()
        del cell
        device_memory.free()


def profile_at(setup: TrainingSetup, opts) -> int:
    """The step torch.profiler records: early, except for CUDA graphs, whose first step of each shape
    records its graphs; there a late step, which replays graphs the first steps recorded."""
    return opts.steps - 3 if setup.train.cuda_graphs else opts.warmup + 2


def estimator_row(session: Session, cell: Cell) -> dict:
    """Train a few steps at the fixed estimator shape (padded batches) and compare the measured
    footprint and allocator peak with memory.estimate."""
    opts, shape, method = session.options, cell.shape, cell.method
    batch, seq = opts.est_batch, opts.est_seq
    setup = estimator_setup(method, batch_size=batch, seq_len=seq, over_3b_params=shape.total_params() > 3e9,
                            cpu=opts.cpu)
    data = synthetic_dataset(max(batch * (opts.est_steps + 1), 64), shape.vocab_size, max_length=seq,
                             fixed_length=seq, seed=1)
    record = session.run(cell, data, setup, steps=opts.est_steps, warmup=1)
    est = memory.estimate(shape, method, batch_size=batch, seq_len=seq, gradient_checkpointing=setup.checkpointing,
                          optimizer=setup.train.optimizer, compute_dtype=session.compute_dtype.itemsize,
                          lora_dropout=setup.lora_dropout)
    info = cell.load_info
    measured_peak = record["peak_bytes"]  # above what was allocated before this cell's model loaded
    row = {"model": shape.name, "method": method, "batch_size": batch, "seq_len": seq,
           "optimizer": setup.train.optimizer, "gradient_checkpointing": setup.checkpointing,
           "lora_dropout": setup.lora_dropout, "status": record["status"],
           "measured_footprint_bytes": info["footprint_bytes"], "estimated_footprint_bytes": est.footprint_bytes,
           "footprint_error": est.footprint_bytes / info["footprint_bytes"] - 1,
           "measured_resident_bytes": info["allocated_after_bytes"], "estimated_resident_bytes": est.resident_bytes,
           "measured_peak_bytes": measured_peak, "estimated_peak_bytes": est.peak_bytes,
           # on CPU the peak is the process's RSS: not comparable
           "peak_error": est.peak_bytes / measured_peak - 1 if measured_peak > 0 and not opts.cpu else None,
           "optimizer_state_tensors": record.get("optimizer_state_tensors"),
           "max_padded_length": record.get("max_padded_length"), "estimate": est.as_dict()}
    log(f"  estimator {shape.name} {method}: footprint {info['footprint_bytes'] / 1e9:.3f} GB vs "
        f"{est.footprint_bytes / 1e9:.3f} GB ({row['footprint_error']:+.2%}); peak {measured_peak / GIB:.2f} GiB vs "
        f"{est.peak_bytes / GIB:.2f} GiB ({(row['peak_error'] or 0):+.1%})")
    return row


def upcast(session: Session) -> None:
    """QLoRA with upcast_all_to_fp32=True: footprint, resident bytes and a short training peak."""
    opts = session.options
    log("upcast: QLoRA with upcast_all_to_fp32=True")
    cell = session.load(opts.upcast_model, "qlora", upcast_all_to_fp32=True)
    setup = default_setup("qlora")
    data = synthetic_dataset(opts.rows, cell.shape.vocab_size, max_length=setup.train.max_length)
    record = session.run(cell, data, setup, steps=opts.upcast_steps, warmup=opts.warmup,
                         name="qlora:upcast_all_to_fp32", peak_tflops=session.peak_tflops)
    session.results["upcast"] = {"load": cell.load_info, "run": record}
    session.write()
    del cell
    device_memory.free()


def estimator(session: Session) -> None:
    """The model x method cells the speed section did not measure, at the fixed estimator shape."""
    opts = session.options
    rows = session.results.setdefault("estimator", [])
    done = {(r["model"], r["method"]) for r in rows}
    session.cap.lift()  # 7B full / LoRA do not fit a T4: measure them anyway (still fp16)
    for key in ("0.5B", "1.5B", "7B"):
        for method in ("full", "lora", "qlora"):
            shape = session.shape(key)
            if (shape.name, method) in done or (opts.cells and f"{key}:{method}" not in opts.cells):
                continue
            log(f"estimator: {shape.name} {method}")
            cell = None
            try:
                cell = session.load(key, method, keep_initial=False)
                session.results.setdefault("loads", {})[f"{shape.name}:{method}"] = cell.load_info
                rows.append(estimator_row(session, cell))
            except Exception as error:  # one cell that fails (OOM at load, say) must not end the section
                log(f"  failed: {error!r}")
                rows.append({"model": shape.name, "method": method, "status": "error", "error": repr(error)[:500]})
            session.write()
            del cell
            device_memory.free()


def probe(session: Session) -> None:
    """Per cell of --probe-cells: one autocast forward + backward per (checkpointing, LoRA dropout,
    batch x seq), measuring what the forward leaves allocated (saved activations) and the peaks."""
    opts = session.options
    rows = session.results.setdefault("probe", [])
    device = "cpu" if opts.cpu else "cuda"
    for spec in opts.probe_cells or ["0.5B:full", "0.5B:lora", "0.5B:qlora"]:
        key, method = spec.split(":")
        shape = session.shape(key)
        cell = session.load(key, method)
        model = cell.loaded.model
        model.train()
        for ckpt in (False, True):
            for dropout in ((0.05, 0.0) if method != "full" else (0.0,)):
                for batch, seq in ((8, 64), (16, 64)):
                    set_checkpointing(model, ckpt)
                    if method != "full":
                        set_dropout(model, dropout)
                    data = synthetic_dataset(batch, shape.vocab_size, max_length=seq, pad_to=seq, fixed_length=seq,
                                             seed=2)
                    ids = torch.tensor([r["input_ids"] for r in data.rows], device=device)
                    mask = torch.tensor([r["attention_mask"] for r in data.rows], device=device)
                    labels = torch.tensor([r["label"] for r in data.rows], device=device)
                    device_memory.free()
                    base = device_memory.allocated()
                    device_memory.reset_peak()
                    with torch.autocast(device, dtype=torch.float16, enabled=device == "cuda"):
                        out = model(input_ids=ids, attention_mask=mask, labels=labels)
                    after_forward = device_memory.allocated() - base
                    forward_peak = device_memory.peak() - base
                    out.loss.backward()
                    backward_peak = device_memory.peak() - base
                    after_backward = device_memory.allocated() - base
                    del out
                    model.zero_grad(set_to_none=True)
                    est = memory.estimate(shape, method, batch_size=batch, seq_len=seq, gradient_checkpointing=ckpt,
                                          lora_dropout=dropout, compute_dtype=session.compute_dtype.itemsize)
                    rows.append({"model": shape.name, "method": method, "checkpointing": ckpt,
                                 "lora_dropout": dropout, "batch_size": batch, "seq_len": seq,
                                 "after_forward_bytes": after_forward, "forward_peak_bytes": forward_peak,
                                 "backward_peak_bytes": backward_peak, "after_backward_bytes": after_backward,
                                 "measured_per_token_layer": after_forward / (batch * seq) / shape.num_layers,
                                 "estimated_per_token_layer": est.per_token_layer_bytes,
                                 "estimated_activation_bytes": est.activation_bytes,
                                 "estimated_autocast_cache_bytes": est.autocast_cache_bytes,
                                 "estimated_transient_bytes": est.transient_bytes})
                    log(f"  probe {shape.name} {method} ckpt={ckpt} p={dropout} {batch}x{seq}: after fwd "
                        f"{after_forward / 2**20:.0f} MiB (est act {est.activation_bytes / 2**20:.0f} + cache "
                        f"{est.autocast_cache_bytes / 2**20:.0f}), fwd peak {forward_peak / 2**20:.0f}, bwd peak "
                        f"{backward_peak / 2**20:.0f} MiB, after bwd {after_backward / 2**20:.0f} MiB")
        session.write()
        del cell, model
        device_memory.free()


SECTIONS = {"env": env, "build": build, "speed": speed, "upcast": upcast, "estimator": estimator, "probe": probe}
