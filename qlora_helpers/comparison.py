"""What 04_comparison shows (and the runner prints): one table over every run, which runs were real
models and which the offline demo, and how a pair of easily confused intents fared in each run."""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from . import plots, results

KAGGLE_INPUT = Path("/kaggle/input")


def load_records(run_dir: str | Path) -> list[dict]:
    """Every valid results.json under run_dir, sorted by run name.

    On Kaggle, when run_dir holds none, the outputs of the training notebooks attached as kernel
    sources (mounted under /kaggle/input) are read instead.
    """
    records = results.read_results(run_dir) if Path(run_dir).is_dir() else []
    if not records and os.environ.get("KAGGLE_KERNEL_RUN_TYPE") and KAGGLE_INPUT.is_dir():
        print(f"no results under {run_dir}: reading the attached notebooks' outputs in {KAGGLE_INPUT}")
        records = results.read_results(KAGGLE_INPUT)
    if not records:
        raise results.ResultsError(
            f"no results.json under {run_dir}: run the training notebooks 01-03 with the same run_dir "
            "first (or `python -m qlora_helpers.run --profile demo`)."
        )
    records.sort(key=lambda r: r["run_name"])
    print(f"{len(records)} run(s): {', '.join(r['run_name'] for r in records)}")
    return records


def _hardware(record: dict) -> str:
    hw = record["hardware"]
    if hw.get("device") == "cuda":
        return f"{hw.get('count', 1)}x {hw.get('name')}"
    return f"CPU, {hw.get('count')} cores"


def model_kind(record: dict) -> str:
    return "offline demo" if record["demo"] else "real model"


def comparison_table(records: list[dict]) -> pd.DataFrame:
    """One row per run: quality, memory, trainable share, speed, and where it ran."""
    rows = []
    for r in records:
        training = r["training"]
        rows.append({
            "run": r["run_name"],
            "model": Path(r["model_id"]).name if not r["model_id"].startswith("offline:") else r["model_id"],
            "kind": model_kind(r),
            "method": r["method"],
            "accuracy": round(r["metrics"]["accuracy"], 4),
            "macro_f1": round(r["metrics"]["macro_f1"], 4),
            "footprint_gb": round(r["footprint_bytes"] / 1e9, 3),
            "trainable_params": r["trainable_params"],
            "trainable_share": f"{r['trainable_params'] / r['total_params']:.2%}",
            "examples_per_s": round(training["examples_per_second"], 1),
            "train_time_s": round(training["train_seconds"], 1),
            "peak_memory_gib": round(training["peak_memory_bytes"] / 2**30, 2),
            "hardware": _hardware(r),
        })
    return pd.DataFrame(rows).set_index("run")


def describe_runs(records: list[dict]) -> str:
    """Markdown saying which runs used real models and which the offline demo stand-in."""
    real = [r for r in records if not r["demo"]]
    demo = [r for r in records if r["demo"]]
    lines = []
    if real:
        lines.append("**Real models:** " + "; ".join(
            f"`{r['run_name']}` ({r['method']} on `{r['model_id']}`, {_hardware(r)})" for r in real) + ".")
    if demo:
        lines.append("**Offline demo:** " + "; ".join(
            f"`{r['run_name']}` ({r['method']} on `{r['model_id']}` standing in for the notebook's model, "
            f"{_hardware(r)})" for r in demo) + ". These numbers show the pipeline working end to end "
            "on a small stand-in model; they are not the Qwen2.5 results.")
    return "\n\n".join(lines)


def save_table(table: pd.DataFrame, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path)
    return path


def zoom_intents(records: list[dict], focus: tuple[str, ...] = (), k: int = 10) -> list[str]:
    """The intents most often involved in confusions across all runs, the focus intents first."""
    counts: Counter = Counter()
    for record in records:
        for pair in record["confused_pairs"]:
            counts[pair["true"]] += pair["count"]
            counts[pair["predicted"]] += pair["count"]
    chosen = list(focus)
    chosen += [name for name, _ in counts.most_common() if name not in chosen]
    return chosen[:k]


def plot_zooms(records: list[dict], intents: list[str], path: str | Path | None = None):
    """The same intents' confusion sub-matrix for every run, side by side."""
    return plots.plot_confusion_zooms_side_by_side(records, intents, path=path)


def pair_table(records: list[dict], first: str, second: str) -> pd.DataFrame:
    """For two intents, per run: how many test examples of each were right, and how many went to
    the other one (read from each run's confusion matrix)."""
    rows = []
    for r in records:
        names = r["label_names"]
        a, b = names.index(first), names.index(second)
        matrix = np.asarray(r["confusion_matrix"])
        rows.append({
            "run": r["run_name"], "model": Path(r["model_id"]).name, "kind": model_kind(r),
            f"{first} correct": f"{matrix[a, a]}/{matrix[a].sum()}",
            f"{first} -> {second}": int(matrix[a, b]),
            f"{second} correct": f"{matrix[b, b]}/{matrix[b].sum()}",
            f"{second} -> {first}": int(matrix[b, a]),
        })
    return pd.DataFrame(rows).set_index("run")
