"""One GPU against two in the same run, through `qlora_helpers.runners.train_all_gpus` (notebook 03's steps), each
GPU emulating a T4: speed on a 7B-shaped random checkpoint at the notebook's effective batch (each GPU half of
every batch) and at twice it; accuracy on real SmolLM2-135M weights. Writes results/two_gpus_<tag>.json and .md."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bench.summarize import REPO, two_gpus_markdown

NOTEBOOK = "03_qlora_qwen2.5_7b"
KNOBS = ("batch_size", "gradient_accumulation", "learning_rate", "lora_dropout", "epochs")


def launch_settings(processes: int, overrides: dict) -> tuple[list[str], dict]:
    """The command and environment for `processes` GPUs. A one-process run sees only the first GPU and is
    told not to use all GPUs: a notebook on a machine with two trains on both by itself (use_all_gpus),
    which once made the "one GPU" row a two-GPU run."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "-m", "qlora_helpers.runners.train_all_gpus", "--profile", "smollm2-t4", "--notebook", NOTEBOOK]
    env = dict(os.environ, QLORA_EMULATE_GPU="t4", PYTHONUNBUFFERED="1")
    if processes == 1:
        overrides = {**overrides, "use_all_gpus": False}
        env["CUDA_VISIBLE_DEVICES"] = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]
    return command + [arg for key, value in overrides.items() for arg in ("--set", f"{key}={value!r}")], env


def launch(processes: int, run_dir: Path, overrides: dict) -> dict:
    """Notebook 03's steps on `processes` GPUs: its results.json's measurements; a run that used another
    number of processes than asked has that as its status."""
    command, env = launch_settings(processes, overrides)
    with open(run_dir.with_suffix(".log"), "w") as log:
        code = subprocess.run(command + ["--run-dir", str(run_dir)], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                              env=env).returncode
    if code != 0:
        return {"status": f"exit {code}", "log_tail": run_dir.with_suffix(".log").read_text()[-2000:]}
    record = json.loads((run_dir / NOTEBOOK / "results.json").read_text())
    training, ran = record["training"], record["training"].get("processes", 1)
    return {"status": "ok" if ran == processes else f"ran on {ran} GPUs, not {processes}", "processes": ran,
            "examples_per_second": training["examples_per_second"], "train_seconds": training["train_seconds"],
            "steps": training["steps"], "examples": training["examples"], "per_gpu_batch": training["batch_size"],
            "peak_memory_gib": training["peak_memory_bytes"] / 2**30, "accuracy": record["metrics"]["accuracy"],
            "macro_f1": record["metrics"]["macro_f1"], "parameters": record["config"]["parameters"],
            "hardware": record["hardware"], "versions": record["versions"]}


def main(args) -> dict:
    from bench.workload import build_checkpoint
    from qlora_helpers import defaults, memory, modeling, offline_models
    from qlora_helpers.notebook import results
    from qlora_helpers.runners import profiles

    work, out = Path(args.work_dir), Path(args.out_dir) / f"two_gpus_{args.tag}.json"
    work.mkdir(parents=True, exist_ok=True)
    qlora = defaults.for_method("qlora")  # a knob the profile leaves out is the method's default
    knobs = {**{k: getattr(qlora, k) for k in KNOBS}, **profiles.get_profile("kaggle-t4").parameters(NOTEBOOK)}
    tuned = {k: knobs[k] for k in ("learning_rate", "lora_dropout", "gradient_accumulation")}
    counts = [int(n) for n in args.gpu_counts]
    report = {"tag": args.tag, "commit": results.code_commit(), "versions": results.library_versions(),
              "notebook_knobs": knobs, "speed": {}, "accuracy": {}}
    if out.is_file():  # runs made earlier in this lease (another --gpu-counts)
        report.update({part: json.loads(out.read_text())[part] for part in ("speed", "accuracy")})
    runs = []  # (part, row, GPUs, run folder, notebook parameters)
    if "speed" in args.parts:
        model = build_checkpoint(memory.QWEN2_5["7B"], work / "qwen2.5-7b-random", "cuda")
        # The checkpoint's word-level tokenizer turns every Banking77 row into zero tokens once reloaded
        # (data.tokenize refuses them); SmolLM2's byte-level BPE (inside the 7B's vocabulary) gives real lengths.
        modeling.load_tokenizer(offline_models.resolve_model_id("offline:smollm2-135m")).save_pretrained(model)
        speed = {**tuned, "model_id": str(model), "max_train_samples": args.speed_train_samples,
                 "max_eval_samples": 770, "epochs": 1.0}
        runs += [("speed", str(n) if scale == 1 else f"{n}, batch x{scale}", n, f"speed{n}x{scale}",
                  {**speed, "batch_size": knobs["batch_size"] * scale})
                 for n, scale in [(n, 1) for n in counts] + [(n, n) for n in counts if n > 1]]
    if "accuracy" in args.parts:
        runs += [("accuracy", str(n), n, f"accuracy{n}", {**tuned, "batch_size": knobs["batch_size"],
                  "epochs": knobs["epochs"], "max_train_samples": args.accuracy_train_samples, "max_eval_samples": None})
                 for n in counts]
    for part, row, processes, folder, overrides in runs:
        report[part][row] = launch(processes, work / folder, overrides)
        print(f"{part}, {row} GPU(s): {report[part][row]}", flush=True)
        out.write_text(json.dumps(report, indent=1, default=str))
    out.with_suffix(".md").write_text(two_gpus_markdown(report))
    return report
