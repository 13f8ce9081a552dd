"""Choose training defaults by validation accuracy per second, on real decoder weights (--model; --method-model).

Each candidate (CANDIDATES) trains on Banking77's training split less a stratified 10% validation split (the
test set is never read), its validation accuracy measured every ~--eval-every examples with the clock stopped.
One worker process per candidate; they share the GPUs so that a sweep fits a short lease. Sharing slows each by
a varying amount, so each worker first trains --solo-steps steps ALONE on its GPU (a GPU's workers take turns
under a file lock, and none goes on until all have had theirs): the examples seen over that window's examples/s
are "solo seconds", the time it would have needed by itself, which speed claims compare.

    python bench/sweep.py run --gpus 0,1 --tag h200_t4          # on a CUDA machine, T4 profile
    python bench/sweep.py report bench/results/sweep_h200_t4     # the table and the plot; `choose`: the winners

`run --device cpu --model offline:tiny-qwen2 ...` is the tiny CPU version tests/test_bench.py runs."""
from __future__ import annotations

import argparse
import fcntl
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

AUTO_LEVERS = dict(cuda_graphs=None, checkpoint_above_tokens="auto", flat_optimizer=True)  # TrainConfig's defaults
# name -> knobs. method; batch x accumulation; learning rate; LoRA dropout; "tutorial" = the common
# tutorial recipe: micro-batch 8, every row padded to 128 tokens, random batches (no length grouping).
CANDIDATES: dict[str, dict] = {
    "full_tutorial": dict(method="full", batch_size=8, learning_rate=2e-5, optimizer="adamw_torch", tutorial=True),
    "full_default": dict(method="full", batch_size=32, learning_rate=None, **AUTO_LEVERS),  # 01's defaults
    "full_b32_lr2e-5": dict(method="full", batch_size=32, learning_rate=2e-5),
    "full_b32_lr1e-4": dict(method="full", batch_size=32, learning_rate=1e-4),
    "full_b32_lr2e-4": dict(method="full", batch_size=32, learning_rate=2e-4),
    "lora_tutorial": dict(method="lora", batch_size=8, learning_rate=2e-4, lora_dropout=0.05, optimizer="adamw_torch",
                          tutorial=True),
    "lora_b32_lr2e-4": dict(method="lora", batch_size=32, learning_rate=2e-4),
    "lora_b32_lr1e-3": dict(method="lora", batch_size=32, learning_rate=1e-3),
    "lora_b64_lr2e-3": dict(method="lora", batch_size=64, learning_rate=2e-3),
    "qlora_tutorial": dict(method="qlora", batch_size=8, learning_rate=2e-4, lora_dropout=0.05, tutorial=True),
    "qlora_b32_lr2e-4": dict(method="qlora", batch_size=32, learning_rate=2e-4),
    "qlora_b32_lr1e-3": dict(method="qlora", batch_size=32, learning_rate=1e-3),
    "qlora_b64_lr2e-3": dict(method="qlora", batch_size=64, learning_rate=2e-3),
    # the notebooks' defaults (defaults.py, and the levers TrainConfig turns on where they can run) with
    # learning_rate None: set by the model's size, as 02/03 do
    "lora_default": dict(method="lora", batch_size=64, learning_rate=None, **AUTO_LEVERS),
    "qlora_default": dict(method="qlora", batch_size=64, learning_rate=None, **AUTO_LEVERS),
    # ... with every step-cost lever off (the defaults before issue 27: no graphs, checkpointing every
    # micro-batch, AdamW without the fused kernel), and QLoRA's with fused fp32 AdamW for the 8-bit one
    "lora_default_levers_off": dict(method="lora", batch_size=64, learning_rate=None, cuda_graphs=False,
                                    optimizer="adamw_torch"),
    # ... at kaggle-t4's micro-batch for 02 (32 x 2): a 1.5B's LoRA at 64 x 1 runs out of a T4's memory
    "lora_default_b32x2": dict(method="lora", batch_size=32, gradient_accumulation=2, learning_rate=None,
                               **AUTO_LEVERS),
    "lora_default_levers_off_b32x2": dict(method="lora", batch_size=32, gradient_accumulation=2, learning_rate=None,
                                          cuda_graphs=False, optimizer="adamw_torch"),
    "qlora_default_levers_off": dict(method="qlora", batch_size=64, learning_rate=None, cuda_graphs=False,
                                     checkpoint_above_tokens=None),
    "qlora_default_fused": dict(method="qlora", batch_size=64, learning_rate=None, optimizer="adamw_torch_fused",
                                **AUTO_LEVERS),
    # the step-cost levers together (bench/speed.py setups: "lever_all"): does accuracy hold?
    "qlora_b64_lr2e-3_levers": dict(method="qlora", batch_size=64, learning_rate=2e-3, compile_layers=True,
                                    optimizer="adamw_torch_fused", gradient_checkpointing=False),
    # the default with its decoder stack replayed as CUDA graphs (lever_cuda_graphs): the same accuracy?
    "qlora_b64_lr2e-3_graphs": dict(method="qlora", batch_size=64, learning_rate=2e-3, cuda_graphs=True),
    # ... and with torch's fused fp32 AdamW instead of the 8-bit one (lever_cuda_graphs_fused_adamw)
    "qlora_b64_lr2e-3_graphs_fused": dict(method="qlora", batch_size=64, learning_rate=2e-3, cuda_graphs=True,
                                          optimizer="adamw_torch_fused"),
}
# optimizer / gradient_checkpointing None: the method's default (qlora_helpers/defaults.py; LoRA's and full's AdamW
# is the fused kernel since issue 27, the same update). CUDA graphs and the checkpointing limit stay off, as the
# candidates measured before issue 27 ran, except where a candidate sets them.
SHARED = dict(epochs=2.0, gradient_accumulation=1, lora_r=16, lora_alpha=32, lora_dropout=0.0, max_length=64,
              tutorial=False, compile_layers=False, cuda_graphs=False, checkpoint_above_tokens=None, flat_optimizer=False,
              optimizer=None, gradient_checkpointing=None)


DEFAULT_SEED = 42  # training.TrainConfig's: a worker of another seed is named <candidate>_seed<seed>
# options of `run` that each worker gets as given (None: left out)
WORKER_OPTIONS = dict(model="offline:smollm2-135m", device="cuda", profile="t4", eval_every=1000, max_seconds=480.0,
                      solo_steps=15, solo_warmup=3, work_dir="/tmp/qlora_sweep", max_train=None, max_validation=None,
                      data_dir=None)


def candidate(name: str, seed: int = DEFAULT_SEED) -> dict:
    """The knobs of candidate `name` trained with `seed` (LoRA and head initialisation, batch order;
    the validation split stays the same). SystemExit naming the candidates for an unknown name."""
    if name not in CANDIDATES:
        raise SystemExit(f"unknown candidate {name!r}: choose from {', '.join(CANDIDATES)}")
    label = name if seed == DEFAULT_SEED else f"{name}_seed{seed}"
    return {**SHARED, **CANDIDATES[name], "name": label, "base": name, "seed": seed}


# Worker ---------------------------------------------------------------------------------------
def mark_solo_done(args, name: str) -> None:
    """Tell the other workers of this GPU that this one no longer needs the GPU alone."""
    if args.lock_dir:
        (Path(args.lock_dir) / f"solo_done.{name}").write_text("1")


def worker(args) -> None:
    try:
        _worker(args)
    finally:  # a worker that fails before its solo window must not keep the others waiting
        mark_solo_done(args, candidate(args.candidate, args.seed)["name"])


def _worker(args) -> None:
    import numpy as np
    import torch
    from transformers import TrainerCallback

    from bench.timing import sync
    from qlora_helpers import data, defaults, emulation, evaluation, modeling, training
    from qlora_helpers.notebook import results

    knobs = candidate(args.candidate, args.seed)
    on_gpu = args.device == "cuda"
    if on_gpu and args.profile == "t4":  # fp16 compute and the T4 cap, applied by load_model (emulation.py)
        os.environ[emulation.ENV_VAR] = "t4"
    if not on_gpu:
        torch.set_num_threads(1)
    bank = data.load_banking77(args.data_dir)
    train_split, validation = data.train_validation_split(bank.train, 0.1, seed=42)
    train_split = data.stratified_subsample(train_split, args.max_train, seed=0)
    validation = data.stratified_subsample(validation, args.max_validation, seed=0)
    loaded = modeling.load_model(args.model, knobs["method"], num_labels=bank.num_labels, lora_r=knobs["lora_r"],
                                 lora_alpha=knobs["lora_alpha"], lora_dropout=knobs["lora_dropout"],
                                 gradient_checkpointing=knobs["gradient_checkpointing"])
    max_length = 128 if knobs["tutorial"] else knobs["max_length"]
    train_rows = data.tokenize(train_split, loaded.tokenizer, max_length=max_length)
    val_rows = data.tokenize(validation, loaded.tokenizer, max_length=max_length)
    config = training.default_train_config(
        knobs["method"], output_dir=str(Path(args.work_dir) / knobs["name"]), epochs=knobs["epochs"],
        batch_size=knobs["batch_size"], gradient_accumulation=knobs["gradient_accumulation"],
        learning_rate=knobs["learning_rate"] or defaults.learning_rate(knobs["method"], loaded.total_params),
        max_length=max_length, save_steps=10**9, logging_steps=10, seed=knobs["seed"],
        group_by_length=not knobs["tutorial"], retry_on_oom=False, compile_layers=knobs["compile_layers"],
        cuda_graphs=knobs["cuda_graphs"], checkpoint_above_tokens=knobs["checkpoint_above_tokens"],
        flat_optimizer=knobs["flat_optimizer"],
        **({"optimizer": knobs["optimizer"]} if knobs["optimizer"] else {}))
    trainer, measure = training.build_trainer(loaded, train_rows, config)
    if knobs["tutorial"]:  # padding="max_length": every row 128 tokens, as the tutorials tokenize
        trainer.data_collator = training.LengthDroppingCollator(loaded.tokenizer, padding="max_length",
                                                                max_length=128)
    effective = knobs["batch_size"] * knobs["gradient_accumulation"]
    eval_steps = max(1, round(args.eval_every / effective))
    record = {"candidate": knobs, "learning_rate": config.learning_rate, "model": args.model, "profile": args.profile,
              "device": args.device, "train_rows": len(train_rows), "validation_rows": len(val_rows),
              "eval_every_steps": eval_steps, "hardware": results.hardware(), "versions": results.library_versions(),
              "commit": args.commit, "curve": [], "solo": None, "status": "running"}
    out = Path(args.out)

    class Sweep(TrainerCallback):
        """Solo window, then validation accuracy every eval_steps with the clock stopped."""

        def __init__(self):
            self.start = self.paused = 0.0
            self.lock = self.solo_start = None

        def on_train_begin(self, a, state, control, **kw):
            if args.lock_dir:
                self.lock = open(Path(args.lock_dir) / "gpu.lock", "w")
                fcntl.flock(self.lock, fcntl.LOCK_EX)  # my turn alone on this GPU
            sync()
            self.start = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            step = state.global_step
            if step == args.solo_warmup:
                sync()
                self.solo_start = (time.perf_counter(), measure.examples, self.paused)
            if step == args.solo_warmup + args.solo_steps and self.solo_start:
                sync()
                began, examples_before, paused_before = self.solo_start
                seconds = time.perf_counter() - began - (self.paused - paused_before)
                examples = measure.examples - examples_before
                record["solo"] = {"steps": args.solo_steps, "examples": examples, "seconds": seconds,
                                  "examples_per_second": examples / seconds}
                self._release(wait=True)
            if step % eval_steps == 0 or step == state.max_steps:
                self.evaluate(state)
            elapsed = time.perf_counter() - self.start - self.paused
            if elapsed > args.max_seconds:
                control.should_training_stop = True
                record["status"] = f"stopped at {args.max_seconds} s"

        def _release(self, wait: bool):
            if self.lock:
                fcntl.flock(self.lock, fcntl.LOCK_UN)
                self.lock.close()
                self.lock = None
            mark_solo_done(args, knobs["name"])
            deadline = time.time() + 600
            while wait and (len(list(Path(args.lock_dir).glob("solo_done.*"))) < args.workers_on_gpu
                            and time.time() < deadline):
                time.sleep(0.5)  # nobody trains alongside another's solo window

        def evaluate(self, state):
            sync()
            paused = time.perf_counter()
            predictions = evaluation.predict(loaded.model, val_rows, loaded.tokenizer, batch_size=256)
            accuracy = float(np.mean(predictions == np.asarray(val_rows["label"])))
            loaded.model.train()
            sync()
            now = time.perf_counter()
            self.paused += now - paused
            record["curve"].append({"step": state.global_step, "examples": measure.examples,
                                    "epoch": state.epoch, "seconds_shared": now - self.start - self.paused,
                                    "validation_accuracy": accuracy})
            out.write_text(json.dumps(record, indent=1))
            print(f"[{knobs['name']}] step {state.global_step} examples {measure.examples} "
                  f"val acc {accuracy:.4f}", flush=True)

    sweep = Sweep()
    trainer.add_callback(sweep)
    try:
        trainer.train()
        if record["status"] == "running":
            record["status"] = "done"
    except Exception as error:  # noqa: BLE001 - record it, a sweep goes on without this candidate
        record["status"] = f"failed: {type(error).__name__}: {str(error)[:300]}"
        raise
    finally:
        sweep._release(wait=False)
        record["step_levers"] = training.step_levers(trainer)  # graphs may have fallen back
        measure.hook.remove()
        peak, kind = training.peak_memory()
        record.update(peak_memory_bytes=peak, peak_memory_kind=kind, peak_reserved_bytes=training.peak_reserved())
        out.write_text(json.dumps(record, indent=1))


# Parent ---------------------------------------------------------------------------------------
def method_model_map(given: list[str]) -> dict[str, str]:
    """--method-model METHOD=MODEL options as {method: model}: that method's candidates train MODEL, not
    --model (01's full fine-tuning on Gemma 3 270M beside 02/03's adapters on Qwen2.5, as qwen-t4 runs them).
    SystemExit naming the form for a malformed one or an unknown method."""
    from qlora_helpers import defaults

    chosen = {}
    for item in given:
        method, _, model = item.partition("=")
        if method not in defaults.METHODS or not model:
            raise SystemExit(f"--method-model {item!r}: give METHOD=MODEL with METHOD one of "
                             f"{', '.join(defaults.METHODS)}, e.g. full=offline:gemma-3-270m")
        if method in chosen:
            raise SystemExit(f"--method-model gives {method} two models ({chosen[method]}, {model}): give one")
        chosen[method] = model
    return chosen


def run(args) -> None:
    names = args.candidates.split(",") if args.candidates else list(CANDIDATES)
    seeds = [int(seed) for seed in args.seeds.split(",")]
    for name in names:
        candidate(name)
    method_models = method_model_map(args.method_models)
    unused = sorted(set(method_models) - {CANDIDATES[name]["method"] for name in names})
    if unused:
        raise SystemExit(f"--method-model {', '.join(unused)}=...: no candidate of --candidates trains that method")
    gpus = args.gpus.split(",") if args.device == "cuda" else ["cpu"]
    out_dir = Path(args.out_dir) / f"sweep_{args.tag}"
    out_dir.mkdir(parents=True, exist_ok=True)
    from qlora_helpers.notebook import results

    commit = results.code_commit()
    # the slow ones first on each GPU, then round-robin, so that the GPUs end together
    order = sorted(names, key=lambda n: (not CANDIDATES[n].get("tutorial"), CANDIDATES[n]["method"] != "qlora"))
    workers = [(name, seed) for seed in seeds for name in order]
    assignment = {worker: gpus[i % len(gpus)] for i, worker in enumerate(workers)}
    procs = []
    for name, seed in workers:
        gpu = assignment[name, seed]
        label = candidate(name, seed)["name"]
        lock_dir = Path(args.work_dir) / f"locks_{args.tag}_{gpu}"
        lock_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if args.device == "cuda":
            env["CUDA_VISIBLE_DEVICES"] = gpu
        cmd = [sys.executable, __file__, "worker", "--candidate", name, "--seed", str(seed), "--out",
               str(out_dir / f"{label}.json"), "--commit", commit, "--lock-dir", str(lock_dir),
               "--workers-on-gpu", str(sum(1 for g in assignment.values() if g == gpu))]
        options = {key: getattr(args, key) for key in WORKER_OPTIONS}
        options["model"] = method_models.get(CANDIDATES[name]["method"], args.model)
        cmd += [arg for key, value in options.items() if value is not None
                for arg in (f"--{key.replace('_', '-')}", str(value))]
        log = open(out_dir / f"{label}.log", "w")
        procs.append((label, subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)))
        print(f"started {label} on {gpu}", flush=True)
    failed = [label for label, proc in procs if proc.wait() != 0]
    print(f"sweep {args.tag}: {len(procs) - len(failed)} finished, failed: {failed or 'none'}; "
          f"results in {out_dir}", flush=True)


# Report ---------------------------------------------------------------------------------------
def load_sweep(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(Path(folder).glob("*.json"))]


def solo_seconds(record: dict, point: dict) -> float | None:
    """Seconds the candidate would have needed alone to see `point`'s examples (see the docstring)."""
    solo = record.get("solo")
    return point["examples"] / solo["examples_per_second"] if solo else None


def time_to(record: dict, accuracy: float) -> float | None:
    """Solo seconds until validation accuracy first reached `accuracy`; None if it never did."""
    for point in record["curve"]:
        if point["validation_accuracy"] >= accuracy:
            return solo_seconds(record, point)
    return None


def choose(folder: Path) -> dict[str, dict]:
    """Per method, the candidate that reached the best validation accuracy (within 0.5 points) in the
    fewest solo seconds: {method: {"name": ..., knobs ..., "target": ..., "solo_seconds": ...}}."""
    records = [r for r in load_sweep(folder) if r["curve"] and r.get("solo")]
    chosen = {}
    for method in ("full", "lora", "qlora"):
        group = [r for r in records if r["candidate"]["method"] == method]
        if not group:
            continue
        target = max(max(p["validation_accuracy"] for p in r["curve"]) for r in group) - 0.005
        timed = [(time_to(r, target), r) for r in group if time_to(r, target) is not None]
        seconds, best = min(timed, key=lambda pair: pair[0])
        chosen[method] = {**best["candidate"], "model": best["model"], "target": target, "solo_seconds": seconds}
    return chosen


def at_tutorials_best(group: list[dict], tutorial: dict) -> list[str]:
    """When the tutorial recipe never reached the target: how much sooner each other candidate reached the
    tutorial's own best validation accuracy. A lower bound: the tutorial was still below it at its evaluation
    before, and each candidate was at or above it by the solo second given."""
    curve = tutorial["curve"]
    best = max(p["validation_accuracy"] for p in curve)
    first = next(i for i, p in enumerate(curve) if p["validation_accuracy"] >= best)
    if first == 0:  # above it at its first evaluation: no second at which it was still below
        return []
    below, reached = solo_seconds(tutorial, curve[first - 1]), solo_seconds(tutorial, curve[first])
    lines = [f"- {tutorial['candidate']['name']} never reached the target. Its own best, {best:.2%}, it had not "
             f"reached at {below:.0f} solo s and had by {reached:.0f}:"]
    for r in group:
        if r is not tutorial:
            t = time_to(r, best)
            lines.append(f"  - {r['candidate']['name']} " + (f"reached it by {t:.0f} solo s, > {below / t:.1f}x sooner."
                                                            if t else "never reached it."))
    return lines


def seed_summary(group: list[dict], target: float) -> list[str]:
    """Per candidate trained with several seeds: final validation accuracy under each, their mean, and the mean
    solo seconds to `target` (a candidate's spread across seeds is the noise a difference must exceed)."""
    by_base: dict[str, list[dict]] = {}
    for record in group:
        by_base.setdefault(record["candidate"].get("base", record["candidate"]["name"]), []).append(record)
    lines = []
    for base, records in by_base.items():
        if len(records) < 2:
            continue
        records = sorted(records, key=lambda r: r["candidate"].get("seed", DEFAULT_SEED))
        finals = [r["curve"][-1]["validation_accuracy"] for r in records]
        times = [time_to(r, target) for r in records]
        reached = [t for t in times if t is not None]
        each = ", ".join(f"{a:.2%} (seed {r['candidate'].get('seed', DEFAULT_SEED)})" for a, r in zip(finals, records))
        when = (f"mean solo s to target {sum(reached) / len(reached):.0f} ({len(reached)} of {len(records)} "
                "reached it)" if reached else "none reached the target")
        lines.append(f"- {base}: final validation accuracy {each}; mean {sum(finals) / len(finals):.2%}; {when}.")
    return lines + [""] if lines else []


def report(args) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(args.folder)
    records = load_sweep(folder)
    lines = [f"# Sweep {folder.name}: validation accuracy per solo second", ""]
    first = records[0]
    hw, versions = first["hardware"], first["versions"]
    models = ", ".join(sorted({r["model"] for r in records}))  # --method-model: one model per method
    lines += [f"Models {models}; {hw.get('name')} x{hw.get('count')}, profile {first['profile']}; "
              f"commit {first['commit']}; torch {versions.get('torch')}, transformers "
              f"{versions.get('transformers')}, peft {versions.get('peft')}, bitsandbytes "
              f"{versions.get('bitsandbytes')}. Train rows {first['train_rows']}, validation rows "
              f"{first['validation_rows']} (carved from train; the test set is not read).", ""]
    groups = {m: [r for r in records if r["candidate"]["method"] == m and r["curve"]]
              for m in ("full", "lora", "qlora")}  # the candidates with a validation curve, by method
    methods = [m for m, group in groups.items() if group]
    if not methods:  # every candidate failed before its first evaluation: the statuses say why
        failures = ", ".join(f"{r['candidate']['name']} {r['status'][:80]}" for r in records)
        lines += [f"No candidate recorded a validation point: {failures}", ""]
    fig, axes = plt.subplots(1, max(1, len(methods)), figsize=(5.4 * max(1, len(methods)), 4.5), sharey=True,
                             squeeze=False)
    axes = axes[0]  # one panel per method the sweep trained
    for ax, method in zip(axes, methods):
        group = groups[method]
        best = max(max(p["validation_accuracy"] for p in r["curve"]) for r in group)
        target = best - 0.005
        tutorial = next((r for r in group if r["candidate"]["tutorial"]), None)
        tutorial_time = time_to(tutorial, target) if tutorial else None
        trained = ", ".join(sorted({r["model"] for r in group}))
        lines += [f"## {method} on {trained}: best validation accuracy {best:.2%}; target {target:.2%} "
                  "(best - 0.5 points)", "",
                  "| candidate | batch x accum | lr | LoRA dropout | solo ex/s | best val acc | final val acc | "
                  "solo s to target | x tutorial | peak GiB | status |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in sorted(group, key=lambda r: time_to(r, target) or math.inf):
            c = r["candidate"]
            t = time_to(r, target)
            ratio = ""
            if t and tutorial and r is not tutorial:
                ratio = (f"{tutorial_time / t:.1f}x" if tutorial_time else
                         f"> {solo_seconds(tutorial, tutorial['curve'][-1]) / t:.1f}x (tutorial never reached it)")
            solo = r.get("solo") or {}
            lines.append(
                f"| {c['name']} | {c['batch_size']} x {c['gradient_accumulation']} | {r.get('learning_rate', c['learning_rate']):g} | "
                f"{c['lora_dropout'] if method != 'full' else '-'} | {solo.get('examples_per_second', float('nan')):.1f} | "
                f"{max(p['validation_accuracy'] for p in r['curve']):.2%} | {r['curve'][-1]['validation_accuracy']:.2%} | "
                f"{f'{t:.0f}' if t else 'never'} | {ratio} | {r.get('peak_memory_bytes', 0) / 2**30:.2f} | {r['status'][:40]} |")
            xs = [solo_seconds(r, p) or 0 for p in r["curve"]]
            ax.plot(xs, [p["validation_accuracy"] for p in r["curve"]], marker=".",
                    linestyle="--" if c["tutorial"] else "-", label=c["name"])
        below_target = at_tutorials_best(group, tutorial) if tutorial and not tutorial_time else []
        lines += [""] + below_target if below_target else []
        lines += seed_summary(group, target)
        ax.axhline(target, color="grey", linewidth=0.8)
        ax.set_title(f"{method}: {trained}")
        ax.set_xlabel("solo training seconds")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7, loc="lower right")
        lines.append("")
    axes[0].set_ylabel("validation accuracy")
    fig.tight_layout()
    png = folder.with_suffix(".png")
    fig.savefig(png, dpi=110)
    text = "\n".join(lines) + f"\n\nPlot: {png.name}\n"
    folder.with_suffix(".md").write_text(text)
    print(text)
    return text


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("run", "worker"):
        p = sub.add_parser(name)
        for key, value in WORKER_OPTIONS.items():
            kind = int if key in ("max_train", "max_validation") else str if value is None else type(value)
            p.add_argument(f"--{key.replace('_', '-')}", type=kind, default=value)
    sub.choices["run"].add_argument("--candidates", default="", help="comma-separated names; default all")
    sub.choices["run"].add_argument("--gpus", default="0")
    sub.choices["run"].add_argument("--method-model", dest="method_models", action="append", default=[],
                                    metavar="METHOD=MODEL", help="train METHOD's candidates on MODEL, not --model "
                                    "(repeatable), e.g. full=offline:gemma-3-270m")
    sub.choices["run"].add_argument("--seeds", default=str(DEFAULT_SEED),
                                    help="comma-separated training seeds: each candidate trains once per seed")
    sub.choices["run"].add_argument("--tag", default="h200_t4")
    sub.choices["run"].add_argument("--out-dir", default=str(REPO / "bench" / "results"))
    w = sub.choices["worker"]
    for flag in ("--candidate", "--out", "--commit", "--lock-dir"):
        w.add_argument(flag, default=None)
    w.add_argument("--workers-on-gpu", type=int, default=1)
    w.add_argument("--seed", type=int, default=DEFAULT_SEED)
    sub.add_parser("report", help="the table (<folder>.md) and the plot (<folder>.png)").add_argument("folder")
    sub.add_parser("choose", help="print the chosen knobs per method as JSON").add_argument("folder")
    args = parser.parse_args(argv)
    commands = {"run": run, "worker": worker, "report": report,
                "choose": lambda a: print(json.dumps(choose(Path(a.folder)), indent=1))}
    commands[args.command](args)


if __name__ == "__main__":
    main()
