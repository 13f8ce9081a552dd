"""The knobs of a notebook, checked before anything heavy runs.

papermill injects parameters as plain Python values, so `-p epochs two` or `-p batch_size "32"`
arrives as a string and would otherwise fail deep inside the Trainer (or, worse, run with a
silently wrong value). `from_namespace` picks the knobs out of the notebook's variables, checks
every one, and raises a single `ParameterError` listing each bad parameter with its fix, before
any data or model is loaded.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from .. import defaults, offline_models

METHODS = defaults.METHODS
DATA_SOURCES = ("auto", "local", "hub")


# What a model id names, as far as the id tells: offline stand-ins ship real weights except the
# random tiny Qwen2 of the tests (offline_models.py).
OFFLINE_PREFIX = "offline:"
RANDOM_OFFLINE_MODELS = ("tiny-qwen2",)


def model_kind(model_id: str) -> str:
    """"hub model", "local folder", "offline stand-in (real weights)" or "random weights (test)".

    An id that is no folder here (nor a path: absolute, `./`, `~`) is the hub's, as from_pretrained
    reads it; a local folder's weights are not known (a random test model and a fine-tuned one look
    alike), so it says no more. results.build_result records it where the model was loaded.
    """
    if model_id.startswith(OFFLINE_PREFIX):
        random = model_id[len(OFFLINE_PREFIX):] in RANDOM_OFFLINE_MODELS
        return "random weights (test)" if random else "offline stand-in (real weights)"
    if Path(model_id).exists() or model_id.startswith(("/", ".", "~")):
        return "local folder"
    return "hub model"


class ParameterError(ValueError):
    """One or more notebook parameters are wrong: the message names each and says how to fix it."""


def _type_name(kind) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "True or False"}[kind]


def _check(name: str, value, kind, optional: bool = False) -> str | None:
    """None if `value` fits `kind`, else the problem and its fix."""
    if value is None and optional:
        return None
    ok = (isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))) or (
        kind is float and isinstance(value, int) and not isinstance(value, bool))
    if ok:
        return None
    expected = _type_name(kind) + (" or None" if optional else "")
    fix = f"set {name} to {expected}"
    if isinstance(value, str) and kind in (int, float):
        try:
            number = kind(value)
        except ValueError:
            pass
        else:
            fix = (f"pass it without quotes ({name}={number!r}; with papermill `-p {name} {number}`, "
                   f"not a quoted string)")
    return f"{name}={value!r} is {type(value).__name__}, but must be {expected}: {fix}."


@dataclass(frozen=True)
class NotebookParameters:
    """Every knob of a training notebook (01-03). Defaults are the Kaggle T4 settings."""

    notebook: str  # the notebook's stem: names its folder in run_dir
    model_id: str = "google/gemma-3-270m"  # a hub id, a local folder, or "offline:..." (offline_models)
    method: str = "full"  # "full", "lora" or "qlora"
    data_dir: str | None = None  # a folder with train.csv, test.csv, categories.json; None: look for one
    data_source: str = "auto"  # "local" (data_dir), "hub" (PolyAI/banking77) or "auto" (folder, else hub)
    max_train_samples: int | None = None  # None: all 10,003 training rows
    max_eval_samples: int | None = None  # None: all 3,080 test rows
    # None: the method's default (defaults.py), filled in when the parameters are built
    epochs: float | None = None
    batch_size: int | None = None  # micro-batch (split over the GPUs when several train)
    gradient_accumulation: int | None = None
    learning_rate: float | None = None
    max_length: int | None = None
    lora_r: int | None = None
    lora_alpha: int | None = None
    lora_dropout: float | None = None
    gradient_checkpointing: bool | None = None  # None: on for qlora, off otherwise
    upcast_all_to_fp32: bool = False  # qlora only: do what prepare_model_for_kbit_training does
    save_steps: int = 200  # a checkpoint every this many optimizer steps (resumable runs)
    keep_checkpoints: bool = False  # keep <run_dir>/<notebook>/checkpoints after a finished run
    use_all_gpus: bool = True  # several GPUs (Kaggle's T4 x2): train data-parallel on all, same effective batch
    # replay the decoder stack as CUDA graphs (graphs.py; lora / qlora, one GPU, lora_dropout 0). None: on
    # where they can run, else off with a line saying why; True: on or an error before anything loads;
    # training.TrainConfig.cuda_graphs, whose default this must be (a test checks)
    cuda_graphs: bool | None = None
    run_dir: str = "runs/kaggle-t4"  # results go to <run_dir>/<notebook>/
    profile: str = "kaggle-t4"  # a label recorded in the results
    seed: int = 42

    def __post_init__(self) -> None:
        # Which knobs were left None, before they are filled in: table() says so, since papermill's
        # injected cell still shows None for them. Not a field: it is no knob.
        object.__setattr__(self, "left_none", frozenset(
            name for name in (*defaults.NOTEBOOK_KNOBS, "gradient_checkpointing") if getattr(self, name) is None))
        if self.method in METHODS:  # an unknown method is reported below, with the other problems
            chosen = defaults.for_method(self.method)
            for name in defaults.NOTEBOOK_KNOBS:
                if getattr(self, name) is None and name != "learning_rate":  # None: by the model's size
                    object.__setattr__(self, name, getattr(chosen, name))
        problems = []
        if isinstance(self.method, str) and self.method not in METHODS:
            problems.append(f"method={self.method!r} is not a method: use one of {', '.join(map(repr, METHODS))}.")
        for item in dataclasses.fields(self):
            kind, optional = _FIELD_TYPES[item.name]
            optional = optional or (item.name in defaults.NOTEBOOK_KNOBS and bool(problems))  # no method: no defaults
            problem = _check(item.name, getattr(self, item.name), kind, optional)
            if problem:
                problems.append(problem)
        if not problems:
            problems = self._check_values()
        if problems:
            raise ParameterError("bad notebook parameter(s):\n  - " + "\n  - ".join(problems))

    def _check_values(self) -> list[str]:
        problems = []
        if self.data_source not in DATA_SOURCES:
            problems.append(f"data_source={self.data_source!r} is not a source: use one of "
                            f"{', '.join(map(repr, DATA_SOURCES))}.")
        if self.data_source == "local" and self.data_dir is None and not os.environ.get("BANKING77_DIR"):
            from ..data import default_data_dir

            if default_data_dir() is None:
                problems.append("data_source='local' but data_dir is None and no Banking77 folder was "
                                "found: set data_dir to the folder holding train.csv, test.csv and "
                                "categories.json (or set BANKING77_DIR).")
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "learning_rate": self.learning_rate,
                    "max_length": self.max_length, "gradient_accumulation": self.gradient_accumulation,
                    "lora_r": self.lora_r, "lora_alpha": self.lora_alpha, "save_steps": self.save_steps}
        for name, value in positive.items():
            if value is not None and value <= 0:
                problems.append(f"{name}={value!r} must be greater than 0.")
        for name in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and value < 77:
                problems.append(f"{name}={value!r} cannot hold one example of each of the 77 intents: "
                                "use at least 77, or None for all rows.")
        if not 0 <= self.lora_dropout < 1:
            problems.append(f"lora_dropout={self.lora_dropout!r} must be in [0, 1).")
        if self.learning_rate is not None and self.learning_rate > 1:
            problems.append(f"learning_rate={self.learning_rate!r} is far too large: typical values are "
                            "1e-5 to 2e-3.")
        if self.cuda_graphs:
            problems += self._cuda_graphs_problems()
        offline = self.model_id[len(OFFLINE_PREFIX):] if self.model_id.startswith(OFFLINE_PREFIX) else None
        if offline is not None and offline not in offline_models.NAMES:
            problems.append(f"model_id={self.model_id!r} is not an offline model: use one of "
                            f"{', '.join(OFFLINE_PREFIX + n for n in offline_models.NAMES)}, or a hub id or folder.")
        if not self.model_id.strip():
            problems.append("model_id is empty: set a hub id (e.g. 'Qwen/Qwen2.5-0.5B'), a local folder, "
                            "or 'offline:all-MiniLM-L6-v2'.")
        if not self.notebook.strip() or "/" in self.notebook:
            problems.append(f"notebook={self.notebook!r} must be the notebook's file name without .ipynb.")
        return problems

    def _cuda_graphs_problems(self) -> list[str]:
        """What would make graphs.enable refuse once the model is loaded, found before anything loads."""
        import torch

        from ..distributed import gpus_to_train_on, launched_processes

        problems = []
        if self.method == "full":
            problems.append("cuda_graphs=True is for the adapter methods ('lora', 'qlora'), not 'full': set "
                            "cuda_graphs=False.")
        if self.method != "full" and self.lora_dropout > 0:
            problems.append(f"cuda_graphs=True needs lora_dropout=0 (a replayed graph would drop the same units at "
                            f"every step), not {self.lora_dropout!r}: set lora_dropout=0.0 or cuda_graphs=False.")
        if not torch.cuda.is_available():
            problems.append("cuda_graphs=True needs a CUDA GPU and this machine has none: set cuda_graphs=None (on "
                            "where it can run) or False.")
        elif launched_processes() > 1:
            problems.append(f"cuda_graphs=True trains in one process, and a launcher started "
                            f"{launched_processes()}: set cuda_graphs=False, or launch one process.")
        elif (processes := gpus_to_train_on(self.use_all_gpus)) > 1:
            problems.append(f"cuda_graphs=True trains in one process, but use_all_gpus=True would train on all "
                            f"{processes} GPUs: set use_all_gpus=False (one GPU, with graphs) or "
                            "cuda_graphs=False (all GPUs).")
        return problems

    # What the notebooks use -------------------------------------------------------------------
    @property
    def demo(self) -> bool:
        """True for the offline stand-in models: their numbers demonstrate the pipeline, not Qwen."""
        return self.model_id.startswith(OFFLINE_PREFIX)

    @property
    def model_kind(self) -> str:
        """What model_id names: see model_kind."""
        return model_kind(self.model_id)

    @property
    def output_dir(self) -> Path:
        """<run_dir>/<notebook>: results.json, confusion PNGs and checkpoints/ of this notebook."""
        return Path(self.run_dir) / self.notebook

    @property
    def checkpoint_dir(self) -> Path:
        return self.output_dir / "checkpoints"

    def as_dict(self) -> dict:
        return {item.name: getattr(self, item.name) for item in dataclasses.fields(self)}

    def table(self):
        """The knobs the notebook runs with and where each value comes from: a knob left None (which
        papermill's injected cell shows as None) gets the method's default, and a learning rate the rule
        that sets it once the model's size is known."""
        from .tables import FullText

        values = {k: repr(v) for k, v in self.as_dict().items()}
        source = dict.fromkeys(values, "notebook")
        for name in self.left_none:
            source[name] = f"None: {self.method}'s default"
        if "gradient_checkpointing" in self.left_none:
            values["gradient_checkpointing"] = repr(defaults.for_method(self.method).gradient_checkpointing)
        if self.learning_rate is None:
            values["learning_rate"] = defaults.learning_rate_rule(self.method)
            if self.method in defaults.SIZED_METHODS:
                source["learning_rate"] = "None: by the model's size"
        return FullText({"value": values, "from": source})

    @property
    def uses_gradient_checkpointing(self) -> bool:
        """gradient_checkpointing, or the method's default (defaults.py: on for qlora) where it is None."""
        if self.gradient_checkpointing is not None:
            return self.gradient_checkpointing
        return defaults.for_method(self.method).gradient_checkpointing

    def learning_rate_for(self, parameters: int) -> float:
        """The peak learning rate this run trains with: the knob, or by the model's size
        (defaults.learning_rate) where it is None."""
        return self.learning_rate if self.learning_rate is not None else defaults.learning_rate(self.method, parameters)


@dataclass(frozen=True)
class ComparisonParameters:
    """The knobs of 04_comparison: where the training notebooks wrote their results."""

    notebook: str = "04_comparison"
    run_dir: str = "runs/kaggle-t4"
    profile: str = "kaggle-t4"
    focus_intents: tuple = ("card_arrival", "card_delivery_estimate")

    def __post_init__(self) -> None:
        problems = [p for p in (_check("run_dir", self.run_dir, str), _check("profile", self.profile, str)) if p]
        intents = self.focus_intents
        if not (isinstance(intents, (list, tuple)) and len(intents) == 2
                and all(isinstance(i, str) for i in intents)):
            problems.append(f"focus_intents={intents!r} must be two intent names, e.g. "
                            "['card_arrival', 'card_delivery_estimate'].")
        else:
            object.__setattr__(self, "focus_intents", tuple(intents))
        if problems:
            raise ParameterError("bad notebook parameter(s):\n  - " + "\n  - ".join(problems))

    @property
    def output_dir(self) -> Path:
        return Path(self.run_dir) / self.notebook

    def as_dict(self) -> dict:
        return {item.name: getattr(self, item.name) for item in dataclasses.fields(self)}


_FIELD_TYPES = {
    "notebook": (str, False), "model_id": (str, False), "method": (str, False), "data_dir": (str, True),
    "data_source": (str, False), "max_train_samples": (int, True), "max_eval_samples": (int, True),
    "epochs": (float, False), "batch_size": (int, False), "gradient_accumulation": (int, False),
    "learning_rate": (float, True), "max_length": (int, False), "lora_r": (int, False),
    "lora_alpha": (int, False), "lora_dropout": (float, False), "gradient_checkpointing": (bool, True),
    "upcast_all_to_fp32": (bool, False), "save_steps": (int, False), "keep_checkpoints": (bool, False),
    "use_all_gpus": (bool, False), "cuda_graphs": (bool, True),
    "run_dir": (str, False), "profile": (str, False), "seed": (int, False),
}


def field_names(kind: type = NotebookParameters) -> list[str]:
    return [item.name for item in dataclasses.fields(kind)]


def from_namespace(namespace: dict, notebook: str):
    """Build the notebook's parameters from its variables (the `parameters` cell plus whatever
    papermill injected). Variables that are not knobs are ignored; missing knobs keep their default.

    04_comparison gets `ComparisonParameters`, the training notebooks `NotebookParameters`.
    """
    kind = ComparisonParameters if notebook == "04_comparison" else NotebookParameters
    values = {name: namespace[name] for name in field_names(kind) if name in namespace and name != "notebook"}
    if isinstance(values.get("data_dir"), Path):
        values["data_dir"] = str(values["data_dir"])
    if isinstance(values.get("run_dir"), Path):
        values["run_dir"] = str(values["run_dir"])
    return kind(notebook=notebook, **values)


def check_overrides(values: dict, kind: type = NotebookParameters) -> None:
    """Refuse knobs this kind of notebook does not have (a typo would otherwise be ignored)."""
    unknown = sorted(set(values) - set(field_names(kind)))
    if unknown:
        raise ParameterError(f"unknown parameter(s) {', '.join(unknown)}: valid ones are "
                             f"{', '.join(field_names(kind))}.")
