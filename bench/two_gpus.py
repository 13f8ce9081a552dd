"""One GPU against two, in the same run: the data-parallel path of `qlora_helpers.runners.train_all_gpus`.

1. Speed: notebook 03's settings (the kaggle-t4 profile's QLoRA knobs, T4 emulation: fp16, 14.5 GiB
   per GPU) on a random-weight model of Qwen2.5-7B's shape (built here, bench/workload.py), one
   process, then two under `accelerate launch`: at the notebook's effective batch (what a notebook
   on two GPUs runs: each GPU takes half of every batch, distributed.split_batch) and at twice
   it (each GPU the one-GPU micro-batch): examples/s, peak memory, optimizer steps.
2. Accuracy: real SmolLM2-135M weights, QLoRA at the same effective batch, test accuracy and
   macro-F1, 1 vs 2 GPUs.
Writes bench/results/two_gpus_<tag>.json and .md (with the commit and library versions).

    python bench/two_gpus.py --tag h200x2_t4      # on a machine with two GPUs
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
NOTEBOOK = "03_qlora_qwen2.5_7b"


def launch_settings(processes: int, overrides: dict) -> tuple[list[str], dict]:
    """The command and environment that run notebook 03's steps on `processes` GPUs. A one-process
    run sees only the first GPU and is told not to use all GPUs: a notebook on a machine with two
    trains on both by itself (use_all_gpus), which once made the "one GPU" row a two-GPU run."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "-m", "qlora_helpers.runners.train_all_gpus", "--profile", "smollm2-t4", "--notebook", NOTEBOOK]
    env = dict(os.environ, QLORA_EMULATE_GPU="t4", PYTHONUNBUFFERED="1")
    if processes == 1:
        overrides = {**overrides, "use_all_gpus": False}
        env["CUDA_VISIBLE_DEVICES"] = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]
    for key, value in overrides.items():
        command += ["--set", f"{key}={value!r}"]
    return command, env


def launch(processes: int, run_dir: Path, overrides: dict, log: Path) -> dict:
    """Run notebook 03's steps on `processes` GPUs; return its results.json plus the wall time.
    A run whose results record another number of processes than asked gets that as its status."""
    command, env = launch_settings(processes, overrides)
    start = time.perf_counter()
    with open(log, "w") as out:
        code = subprocess.run(command + ["--run-dir", str(run_dir)], cwd=REPO, stdout=out,
                              stderr=subprocess.STDOUT, env=env).returncode
    wall = time.perf_counter() - start
    if code != 0:
        return {"status": f"exit {code}", "wall_seconds": wall, "log_tail": log.read_text()[-2000:]}
    record = json.loads((run_dir / NOTEBOOK / "results.json").read_text())
    ran = record["training"].get("processes", 1)
    return {"status": "ok" if ran == processes else f"ran on {ran} GPUs, not {processes}",
            "wall_seconds": wall, "processes": ran,
            "examples_per_second": record["training"]["examples_per_second"],
            "train_seconds": record["training"]["train_seconds"], "steps": record["training"]["steps"],
            "examples": record["training"]["examples"], "per_gpu_batch": record["training"]["batch_size"],
            "peak_memory_gib": record["training"]["peak_memory_bytes"] / 2**30,
            "accuracy": record["metrics"]["accuracy"], "macro_f1": record["metrics"]["macro_f1"],
            "parameters": record["config"]["parameters"], "hardware": record["hardware"],
            "versions": record["versions"]}


def markdown(report: dict) -> str:
    """A report as markdown: what ran (knobs, data, libraries), then per part each run's speed against
    the part's one-GPU run. A run that
    did not run as asked (status other than ok) shows its status and no speed-up, nor serves as the
    one-GPU baseline."""
    knobs, versions = report.get("notebook_knobs", {}), report.get("versions", {})
    ran = {part: [r for r in report[part].values() if "examples" in r] for part in ("speed", "accuracy")}
    about = [f"Each GPU emulating a T4 (fp16, allocator capped at 14.5 GiB); notebook 03's QLoRA knobs (effective "
             f"batch {knobs.get('batch_size', '?')} x {knobs.get('gradient_accumulation', '?')}, lr "
             f"{knobs.get('learning_rate', '?')}); on two GPUs each takes half of every batch."]
    if ran["speed"]:
        about.append(f"Speed: random weights of Qwen2.5-7B's shape, {ran['speed'][0]['examples']:,} examples trained "
                     "on, 1 epoch (their accuracy means nothing); in `2, batch x2` each GPU takes the one-GPU "
                     "micro-batch (the effective batch doubled).")
    if ran["accuracy"]:
        about.append(f"Accuracy: real SmolLM2-135M weights, {ran['accuracy'][0]['examples']:,} examples trained "
                     f"on over {knobs.get('epochs', '?')} epochs, the whole test set.")
    about.append("Libraries: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".")
    lines = [f"# One vs two GPUs ({report['tag']}, commit {report['commit']})", "", " ".join(about), "",
             "| part | GPUs asked | GPUs used | per-GPU batch | examples/s | speed-up | train s | steps | "
             "peak GiB/GPU | test acc | macro-F1 | status |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for part in ("speed", "accuracy"):
        one = report[part].get("1", {})
        one_eps = one.get("examples_per_second") if one.get("status") == "ok" else None
        for n, r in sorted(report[part].items()):
            if "examples_per_second" not in r:
                lines.append(f"| {part} | {n} | | | | | | | | | | {r['status']} |")
                continue
            speedup = f"{r['examples_per_second'] / one_eps:.2f}x" if one_eps and r["status"] == "ok" else "-"
            lines.append(f"| {part} | {n} | {r.get('processes', '?')} | {r['per_gpu_batch']} | "
                         f"{r['examples_per_second']:.1f} | {speedup} | {r['train_seconds']:.0f} | {r['steps']} | "
                         f"{r['peak_memory_gib']:.2f} | {r['accuracy']:.2%} | {r['macro_f1']:.3f} | {r['status']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tag", default="h200x2_t4")
    parser.add_argument("--out-dir", default=str(REPO / "bench" / "results"))
    parser.add_argument("--work-dir", default="/tmp/qlora_two_gpus")
    parser.add_argument("--speed-train-samples", type=int, default=3000)
    parser.add_argument("--parts", default="speed,accuracy")
    parser.add_argument("--gpu-counts", default="1,2", help="which runs now, e.g. 1 (while the other GPU is busy), then 2")
    parser.add_argument("--accuracy-train-samples", type=int, default=2000)
    parser.add_argument("--chosen", help="JSON file from `bench/sweep.py choose`: its qlora knobs replace the profile's")
    args = parser.parse_args(argv)
    from bench.workload import build_checkpoint
    from qlora_helpers import defaults, memory, modeling, offline_models
    from qlora_helpers.notebook import results
    from qlora_helpers.runners import profiles

    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    knobs = profiles.get_profile("kaggle-t4").parameters(NOTEBOOK)
    if args.chosen:
        chosen = json.loads(Path(args.chosen).read_text())["qlora"]
        knobs.update({k: chosen[k] for k in ("batch_size", "gradient_accumulation", "learning_rate", "lora_dropout",
                                             "epochs")})
    chosen_defaults = defaults.for_method("qlora")  # a knob the profile leaves out is the method's default
    knobs = {**{k: getattr(chosen_defaults, k) for k in ("batch_size", "gradient_accumulation", "learning_rate",
                                                          "lora_dropout", "epochs")}, **knobs}
    tuned = {k: knobs[k] for k in ("learning_rate", "lora_dropout", "gradient_accumulation")}
    commit = results.code_commit()
    out = Path(args.out_dir) / f"two_gpus_{args.tag}"
    counts = [int(n) for n in args.gpu_counts.split(",")]
    report = {"tag": args.tag, "commit": commit, "versions": results.library_versions(),
              "notebook_knobs": knobs, "speed": {}, "accuracy": {}}
    if out.with_suffix(".json").is_file():  # runs made earlier in this lease (another --gpu-counts)
        earlier = json.loads(out.with_suffix(".json").read_text())
        for part in ("speed", "accuracy"):
            report[part] = dict(earlier[part])
    if "speed" in args.parts:
        model = build_checkpoint(memory.QWEN2_5["7B"], work / "qwen2.5-7b-random", "cuda")
        # The checkpoint's own word-level tokenizer reloads as a Qwen2 BPE one that turns every row into
        # zero tokens (data.tokenize refuses them): Banking77 text needs a real tokenizer. SmolLM2's
        # byte-level BPE (49,152 ids, inside the 7B's vocabulary) gives lengths like Qwen2.5's.
        modeling.load_tokenizer(offline_models.resolve_model_id("offline:smollm2-135m")).save_pretrained(model)
        runs = [(n, 1) for n in counts] + [(n, n) for n in counts if n > 1]  # (GPUs, effective batch x)
        for n, scale in runs:
            key = str(n) if scale == 1 else f"{n}, batch x{scale}"
            report["speed"][key] = launch(n, work / f"speed{n}x{scale}", {
                **tuned, "batch_size": knobs["batch_size"] * scale, "model_id": str(model),
                "max_train_samples": args.speed_train_samples, "max_eval_samples": 770, "epochs": 1.0},
                work / f"speed{n}x{scale}.log")
            print(f"7B QLoRA on {n} GPU(s), effective batch x{scale}: {report['speed'][key]}", flush=True)
            out.with_suffix(".json").write_text(json.dumps(report, indent=1, default=str))
    if "accuracy" in args.parts:
        for n in counts:
            report["accuracy"][str(n)] = launch(n, work / f"accuracy{n}", {
                **tuned, "batch_size": knobs["batch_size"], "epochs": knobs["epochs"],
                "max_train_samples": args.accuracy_train_samples, "max_eval_samples": None},
                work / f"accuracy{n}.log")
            print(f"SmolLM2 QLoRA on {n} GPU(s): {report['accuracy'][str(n)]}", flush=True)
            out.with_suffix(".json").write_text(json.dumps(report, indent=1, default=str))
    text = markdown(report)
    out.with_suffix(".md").write_text(text)
    print(text)

if __name__ == "__main__":
    main()
