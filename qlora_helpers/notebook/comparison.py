"""What 04_comparison shows (and the runner prints): one table over every run, what kind of model
each run used, what the runs measured (in sentences read off the results), and how a pair of easily
confused intents fared in each run."""
from __future__ import annotations

import math
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from . import parameters, plots, results

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
            "first (or the runner with the same --profile and --run-dir, all four notebooks)."
        )
    records.sort(key=lambda r: r["run_name"])
    print(f"{len(records)} run(s): {', '.join(r['run_name'] for r in records)}")
    return records


def hardware_label(record: dict) -> str:
    """Where a run trained, e.g. "1x NVIDIA H200 emulating a T4" or "CPU, 2 cores"."""
    hw = record["hardware"]
    if hw.get("device") == "cuda":
        emulating = f" emulating a {hw['emulating'].upper()}" if hw.get("emulating") else ""  # emulation.py
        return f"{hw.get('count', 1)}x {hw.get('name')}{emulating}"
    return f"CPU, {hw.get('count')} cores"


def model_kind(record: dict) -> str:
    """As saved with the run (parameters.model_kind, judged where the model was loaded), or judged
    from the id for results written before the field existed."""
    return record.get("model_kind") or parameters.model_kind(record["model_id"])


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
            "hardware": hardware_label(r),
        })
    return pd.DataFrame(rows).set_index("run")


# comparison_table's columns in two tables that each fit a page 1280 px wide (all of them in one did not).
QUALITY_COLUMNS = ["model", "kind", "method", "accuracy", "macro_f1"]
COST_COLUMNS = ["method", "footprint_gb", "trainable_params", "trainable_share", "peak_memory_gib", "train_time_s",
                "examples_per_s", "hardware"]


def quality_and_cost(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """comparison_table split in two, one row per run in each: what each run reached, and what it cost."""
    return table[QUALITY_COLUMNS], table[COST_COLUMNS]


_KIND_NOTES = {
    "hub model": "",
    "local folder": " What these weights are, the results cannot tell: a folder may hold a pretrained, a "
                    "fine-tuned or a random model.",
    "offline stand-in (real weights)": " Small pretrained models standing in for the notebooks' own models "
                                       "(Gemma 3 270M, Qwen2.5-1.5B and -7B): they show the methods at work on "
                                       "real weights, not those models' results.",
    "random weights (test)": " A random model that tests the pipeline: its accuracy means nothing.",
}


def describe_runs(records: list[dict]) -> str:
    """Markdown naming each run's kind of model (model_kind), with what that kind's numbers can say."""
    kinds: dict[str, list[dict]] = {}
    for r in records:
        kinds.setdefault(model_kind(r), []).append(r)
    return "\n\n".join(
        f"**{kind[0].upper()}{kind[1:]}:** " + "; ".join(
            f"`{r['run_name']}` ({r['method']} on `{r['model_id']}`, {hardware_label(r)})" for r in runs)
        + "." + _KIND_NOTES.get(kind, "") for kind, runs in kinds.items())


def _run(r: dict) -> str:
    return f"`{r['run_name']}` ({r['method']})"


def _spread(records: list[dict], value, unit: str, best: str, worst: str, low_is_best: bool = False) -> str:
    """'<best>: run, value; <worst>: run, value (a factor of f between them).', or that the runs were
    within 5% of each other (a difference that small says nothing about the methods)."""
    ranked = sorted(records, key=value, reverse=not low_is_best)
    top, bottom = ranked[0], ranked[-1]
    high, low = max(value(top), value(bottom)), min(value(top), value(bottom))
    if high <= 1.05 * low:
        return f"{best}: none; the runs were within 5% of each other ({unit.format(low)} to {unit.format(high)})."
    factor = f"a factor of {high / low:.2f} between them" if low > 0 else "the lowest is zero"

    def runs_at(end: dict) -> str:  # every run that ties at this end
        return " and ".join(_run(r) for r in records if value(r) == value(end))

    return (f"{best}: {runs_at(top)}, {unit.format(value(top))}; {worst}: {runs_at(bottom)}, "
            f"{unit.format(value(bottom))} ({factor}).")


def _accuracy_spread(records: list[dict]) -> str:
    """The most and least accurate runs, or that the test set cannot tell them apart: a gap within
    two standard errors of the difference of two accuracies, the root of the sum of their squared
    standard errors (plots.accuracy_standard_error: the normal approximation to two binomial
    proportions, n the test rows), could reverse on another test set of the same size."""
    accuracy = lambda r: r["metrics"]["accuracy"]  # noqa: E731
    ranked = sorted(records, key=accuracy, reverse=True)
    top, bottom = ranked[0], ranked[-1]
    (p1, n1), (p2, n2) = [(accuracy(r), plots.test_set_size(r)) for r in (top, bottom)]
    two_se = 2 * math.hypot(plots.accuracy_standard_error(top), plots.accuracy_standard_error(bottom))
    if p1 - p2 <= two_se:
        return (f"Most accurate: none that the test set can tell apart; {p2:.1%} to {p1:.1%} accuracy, a gap within "
                f"two standard errors ({100 * two_se:.1f} points on {min(n1, n2):,} test rows).")
    tied = lambda end: " and ".join(_run(r) for r in records if accuracy(r) == accuracy(end))  # noqa: E731
    return (f"Most accurate: {tied(top)}, {p1:.1%}; least: {tied(bottom)}, {p2:.1%} ({100 * (p1 - p2):.1f} points "
            f"apart, more than two standard errors: {100 * two_se:.1f} points).")


def findings(records: list[dict]) -> str:
    """Markdown sentences read off the results, never assumed: which runs share a model (their
    differences are the method's alone), and which run was the most accurate, the fastest and the
    lightest, against the opposite end, with what makes a comparison uneven (other hardware, peak
    memory measured two ways)."""
    if len(records) < 2:
        return "One run: nothing to compare yet."
    lines = []
    models: dict[str, list[str]] = {}
    for r in records:
        models.setdefault(r["model_id"], []).append(f"`{r['run_name']}`")
    for model_id, runs in models.items():
        if len(runs) > 1:
            lines.append(f"{', '.join(runs)} trained the same model (`{model_id}`): their differences are the "
                         "methods'.")
    if len(models) > 1:
        lines.append("Runs on different models differ in model size as well as in method.")
    lines.append(_accuracy_spread(records))
    lines.append(_spread(records, lambda r: r["training"]["examples_per_second"], "{:.1f} examples/s",
                         "Fastest to train", "slowest"))
    if len({hardware_label(r) for r in records}) > 1:
        lines.append("The runs ran on different hardware, so speed compares machines as well as methods.")
    resumed = [f"`{r['run_name']}` (from step {r['training']['resumed_from_step']})" for r in records
               if r["training"].get("resumed_from_step")]
    if resumed:
        lines.append(f"Resumed from a checkpoint: {', '.join(resumed)}. Their train_time_s counts only the steps "
                     "after resuming; their examples/s is that part's.")
    peak_kinds = {r["training"]["peak_memory_kind"] for r in records}
    lines.append(_spread(records, lambda r: r["training"]["peak_memory_bytes"] / 2**30, "{:.2f} GiB",
                         "Lowest peak memory in training", "highest", low_is_best=True))
    if len(peak_kinds) > 1:
        lines.append("Peak memory was measured two ways (CUDA allocator on a GPU, process RSS on a CPU): "
                     "those figures do not compare.")
    lines.append(_spread(records, lambda r: r["footprint_bytes"] / 1e9, "{:.3f} GB",
                         "Smallest weights as loaded", "largest", low_is_best=True))
    return "\n".join(f"- {line}" for line in lines)


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
