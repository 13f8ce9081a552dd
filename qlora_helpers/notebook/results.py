"""One small versioned JSON per training run: what the comparison notebook reads.

Written atomically (a partial file renamed over the target, see atomic.py), so a crash mid-write never
leaves a half-written results file that could pass as complete.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import platform
from datetime import datetime, timezone
from pathlib import Path

import torch

from .. import atomic
from ..distributed import is_main_process
from .parameters import model_kind

SCHEMA = "qlora-notebooks/run-result"
SCHEMA_VERSION = 1

# key -> the type(s) its value must have; nested dicts are checked one level down.
REQUIRED = {
    "schema": str, "schema_version": int, "run_name": str, "model_id": str, "method": str,
    "demo": bool, "hardware": dict, "data": dict, "footprint_bytes": int, "trainable_params": int,
    "total_params": int, "training": dict, "metrics": dict, "label_names": list,
    "confusion_matrix": list, "confused_pairs": list, "versions": dict, "created_at": str,
}
REQUIRED_TRAINING = {"train_seconds": (int, float), "examples_per_second": (int, float),
                     "tokens_per_second": (int, float), "padding_share": (int, float),
                     "peak_memory_bytes": int, "peak_memory_kind": str, "steps": int}
REQUIRED_METRICS = {"accuracy": (int, float), "macro_f1": (int, float)}


class ResultsError(ValueError):
    """A results file is missing, unreadable, or not of this schema."""


def hardware() -> dict:
    """The machine that ran: device kind, name, count, memory; `emulating` names a GPU profile
    (emulation.py, e.g. "t4") that a bigger GPU played, else None."""
    from ..emulation import emulated_gpu

    if torch.cuda.is_available():
        return {"device": "cuda", "name": torch.cuda.get_device_name(0),
                "count": torch.cuda.device_count(),
                "memory_bytes": torch.cuda.get_device_properties(0).total_memory,
                "emulating": emulated_gpu()}
    return {"device": "cpu", "name": platform.processor() or platform.machine(),
            "count": os.cpu_count() or 1, "memory_bytes": None, "emulating": None}


def code_commit() -> str:
    """The commit of the code that runs: $QLORA_COMMIT if set (a copy of the tree whose .git is not
    the one it came from, as on a lent GPU machine), else `git rev-parse --short HEAD`, else "unknown"."""
    import subprocess

    if os.environ.get("QLORA_COMMIT"):
        return os.environ["QLORA_COMMIT"]
    done = subprocess.run(["git", "-C", str(Path(__file__).resolve().parent), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def library_versions() -> dict:
    names = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "datasets")
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def build_result(*, run_name: str, loaded, stats, evaluation, label_names: list[str], data: dict,
                 demo: bool, config: dict) -> dict:
    """Assemble the results record from the objects the notebook already holds."""
    from ..modeling import dtype_name  # here, not at the top: the runner reads results without transformers
    record = {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "run_name": run_name,
        "model_id": loaded.model_id, "model_kind": model_kind(loaded.model_id), "method": loaded.method,
        "kaggle_model_folder": loaded.kaggle_folder,  # the mounted Kaggle Model it loaded from, else None
        "demo": demo,
        "compute_dtype": dtype_name(loaded.compute_dtype),
        "hardware": hardware(), "data": data,
        "footprint_bytes": int(loaded.footprint_bytes), "trainable_params": int(loaded.trainable_params),
        "total_params": int(loaded.total_params), "training": stats.as_dict(),
        "metrics": {"accuracy": evaluation.accuracy, "macro_f1": evaluation.macro_f1,
                    "absent_intents": list(evaluation.absent_intents)},
        "label_names": list(label_names), "confusion_matrix": evaluation.confusion.tolist(),
        "confused_pairs": evaluation.confused_pairs, "config": config,
        "versions": library_versions(), "commit": code_commit(),
        "created_at": datetime.now(timezone.utc).isoformat(),
    }
    validate(record)
    return record


def validate(record: dict, source: str = "results") -> dict:
    if not isinstance(record, dict):
        raise ResultsError(f"{source}: expected a JSON object, got {type(record).__name__}.")
    if record.get("schema") != SCHEMA or record.get("schema_version") != SCHEMA_VERSION:
        raise ResultsError(
            f"{source}: schema {record.get('schema')!r} v{record.get('schema_version')!r} is not "
            f"{SCHEMA!r} v{SCHEMA_VERSION}: rerun the notebook that wrote it with this version."
        )
    for section, required in (("", REQUIRED), ("training", REQUIRED_TRAINING), ("metrics", REQUIRED_METRICS)):
        values = record[section] if section else record
        for key, types in required.items():
            if key not in values:
                raise ResultsError(f"{source}: missing {f'{section}.' if section else ''}{key}.")
            if not isinstance(values[key], types) or (types is int and isinstance(values[key], bool)):
                raise ResultsError(f"{source}: {f'{section}.' if section else ''}{key} has the wrong type "
                                   f"({type(values[key]).__name__}).")
    # Optional (results written before it lack it): where each logged loss falls, in examples seen.
    seen, losses = record["training"].get("loss_examples_seen"), record["training"].get("losses")
    if seen is not None and not (isinstance(seen, list) and isinstance(losses, list) and len(seen) == len(losses)):
        raise ResultsError(f"{source}: training.loss_examples_seen must list one count per training.losses "
                           "entry: rerun the notebook that wrote it.")
    # Optional (results written before it lack it: no recoveries): the divergences training rolled back.
    if not isinstance(record["training"].get("recoveries", []), list):
        raise ResultsError(f"{source}: training.recoveries must be a list: rerun the notebook that wrote it.")
    return record


def write_result(record: dict, path: str | Path) -> Path:
    """Validate, then write atomically: the file is either the old one or the complete new one.
    Under DDP only the main process writes."""
    validate(record)
    path = Path(path)
    if not is_main_process():
        return path
    return atomic.write_text(path, json.dumps(record, indent=1))


def read_result(path: str | Path) -> dict:
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError as error:
        raise ResultsError(f"{path} does not exist: run the training notebook that writes it.") from error
    except json.JSONDecodeError as error:
        raise ResultsError(f"{path} is not valid JSON ({error}): rerun the notebook that wrote it.") from error
    return validate(record, str(path))


def read_results(folder: str | Path) -> list[dict]:
    """Every valid results file under `folder` (sorted by name); invalid ones are skipped with a note."""
    records = []
    for path in sorted(Path(folder).glob("**/results.json")):
        try:
            records.append(read_result(path))
        except ResultsError as error:
            print(f"skipped: {error}")
    return records
