"""The steps every training notebook (01-03) takes, one function per notebook cell.

The notebooks differ in their parameters (model, method, hyper-parameters) and in the prose around
the steps, not in the steps: data, model, tokens, training, evaluation, figures, results file. Each
function prints or returns what its cell should show, and files go to `params.output_dir`
(`<run_dir>/<notebook>/`).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd


# Library notices a reader can do nothing about, each matched by its logger or warning category and
# its message, and hidden only around the step that meets it; anything else still shows.
class _DropMessage(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


@contextmanager
def _quiet(logs: tuple[tuple[str, str], ...] = (), warns: tuple[tuple[type[Warning], str], ...] = (),
           filters: tuple[tuple[str, logging.Filter], ...] = ()):
    """Within the block: drop the records of logger `name` whose message contains `text` (logs),
    ignore warnings of `category` whose message starts with `text` (warns), and apply `filters`."""
    added = [(logging.getLogger(name), _DropMessage(text)) for name, text in logs]
    added += [(logging.getLogger(name), f) for name, f in filters]
    for logger, f in added:
        logger.addFilter(f)
    try:
        with warnings.catch_warnings():
            for category, text in warns:
                warnings.filterwarnings("ignore", message=re.escape(text), category=category)
            yield
    finally:
        for logger, f in added:
            logger.removeFilter(f)


# What importing the libraries may say. Matched by the library's own fixed words, never by the reason
# it appends: that reason changes with the install ("No module named 'kernels'" without the package;
# with kernels >= 0.19, "... is not available in the local cache and Hugging Face Hub is in offline mode").
IMPORT_NOTICES = dict(
    # On a CPU with AVX-512 BF16, bitsandbytes tries a faster 4-bit matmul from the hub's `kernels`
    # package, then uses its own.
    logs=(("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward from kernels-community"),
          ("kernels._internals.hf_hub", "Skipping publisher trust check for 'kernels-community/")),
    # Without ipywidgets, tqdm warns on import that it falls back to text progress bars: harmless.
    warns=((Warning, "IProgress not found"),),
)
with _quiet(**IMPORT_NOTICES):
    from .. import data, evaluation, modeling, training
    from . import plots, results
from .. import emulation, memory, offline_models
from ..distributed import gpus_to_train_on, is_main_process, launched_processes, split_batch
from .parameters import OFFLINE_PREFIX, NotebookParameters
from .tables import FullText

RESULTS_FILE = "results.json"
CONFUSION_FILE = "confusion_matrix.png"
ZOOM_FILE = "confusion_zoom.png"
LOSS_FILE = "loss_curve.png"


def results_path(params: NotebookParameters) -> Path:
    return params.output_dir / RESULTS_FILE


# Data -----------------------------------------------------------------------------------------
def load_data(params: NotebookParameters) -> data.Banking77:
    """Banking77 from the folder or the hub, then the stratified subsets the parameters ask for."""
    bank = data.load_banking77(params.data_dir, source=params.data_source)
    full_train, full_test = len(bank.train), len(bank.test)
    bank = dataclasses.replace(
        bank,
        train=data.stratified_subsample(bank.train, params.max_train_samples, seed=params.seed),
        test=data.stratified_subsample(bank.test, params.max_eval_samples, seed=params.seed),
    )
    print(f"Banking77 from {_short_source(bank.source)}: {bank.num_labels} intents; training on "
          f"{len(bank.train):,} of {full_train:,} rows, testing on {len(bank.test):,} of {full_test:,}.")
    return bank


def _short_source(source: str) -> str:
    """The data source without the machine's folder layout (it ends up in shared HTML)."""
    return Path(source).name if Path(source).is_absolute() else source


def show_examples(bank: data.Banking77, n: int = 8, seed: int = 0) -> pd.DataFrame:
    """A few training utterances and their intents."""
    rows = np.random.default_rng(seed).choice(len(bank.train), size=min(n, len(bank.train)), replace=False)
    picked = bank.train.select(sorted(rows))
    return FullText({"text": picked["text"], "intent": [bank.label_names[i] for i in picked["label"]]})


# The model each notebook is written for ------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TitledModel:
    """The model a training notebook's title names: its hub id (the parameters cell's default, profile
    kaggle-t4), its name, nominal size, and its memory.QWEN2_5 shape (None: memory.estimate has none)."""

    model_id: str
    name: str
    parameters: float
    shape: str | None = None


TITLED_MODELS = {
    "01_full_precision_baseline": TitledModel("google/gemma-3-270m", "Gemma 3 270M", 268e6),
    "02_lora_qwen2.5_1.5b": TitledModel("Qwen/Qwen2.5-1.5B", "Qwen2.5-1.5B", 1.54e9, "1.5B"),
    "03_qlora_qwen2.5_7b": TitledModel("Qwen/Qwen2.5-7B", "Qwen2.5-7B", 7.62e9, "7B"),
}


def runs_titled_model(params: NotebookParameters) -> bool:
    """True for the notebook's own model: its hub id, or the folder where Kaggle mounts its Kaggle Model
    (`<input>/[models/<owner>/]<model>/<framework>/<variation>/<version>`)."""
    titled = TITLED_MODELS[params.notebook].model_id
    mount = modeling.KAGGLE_MODELS[titled].split("/", 1)[1].lower()
    return params.model_id == titled or params.model_id.rstrip("/").lower().endswith("/" + mount)


def stand_in_banner(params: NotebookParameters) -> str | None:
    """Markdown saying which model runs in place of the notebook's own, why, and what differs; None when
    the notebook's own model runs. Every figure a stand-in's cells print is the stand-in's, while the
    title, the prose and the reader's expectations are the titled model's: the banner keeps them apart."""
    if runs_titled_model(params):
        return None
    titled = TITLED_MODELS[params.notebook]
    name = params.model_id
    stand_in = offline_models.STAND_INS.get(name.removeprefix(OFFLINE_PREFIX)) if params.demo else None
    if stand_in:
        what, why, differs = stand_in.name, stand_in.purpose, [_size_against(stand_in.parameters, titled),
                                                               stand_in.differs]
    elif params.model_kind == "hub model":
        what, why, differs = "a hub model", "the parameters set `model_id` to it", ["another checkpoint"]
    else:  # a local folder, named without the machine's folders
        name = Path(params.model_id).name
        what, why, differs = "a local folder", "the parameters set `model_id` to it", ["whatever the folder holds"]
    if params.profile != NotebookParameters.profile:  # the parameters cell's label is the titled run's
        why += f"; profile `{params.profile}` runs it"
    if emulated := emulation.emulated_gpu():
        why += f", on a bigger GPU emulating a {emulated.upper()} ({emulation.ENV_VAR}={emulated})"
    estimates = f"; the prose gives {titled.name}'s as `memory.estimate`'s estimates" if titled.shape else ""
    return (f"**Stand-in model.** This run trains {what} (`{name}`) in place of {titled.name} "
            f"(`{titled.model_id}`), the model this notebook is written for.\n\n"
            f"- **Why:** {why}.\n"
            f"- **What differs:** {'; '.join(differs)}. Every figure the cells print (memory, trainable share, "
            f"speed, accuracy) is this model's, not {titled.name}'s{estimates}.")


def _size_against(stand_in: float, titled: TitledModel) -> str:
    """'the same size as X', or how many times smaller or larger, with both nominal sizes."""
    ratio = titled.parameters / stand_in
    sizes = f"{_nominal(stand_in)} parameters against {_nominal(titled.parameters)}"
    if 0.9 <= ratio <= 1.1:
        return f"the same size as {titled.name} ({sizes})"
    factor = f"about 1/{ratio:.0f} the size of" if ratio > 1 else f"about {1 / ratio:.1f}x the size of"
    return f"{factor} {titled.name} ({sizes})"


def _nominal(count: float) -> str:
    return f"{count / 1e9:.2g}B" if count >= 1e9 else f"{count / 1e6:.3g}M"


def show_stand_in(params: NotebookParameters) -> None:
    """Display stand_in_banner as Markdown, if this run's model is a stand-in."""
    from IPython.display import Markdown, display

    if banner := stand_in_banner(params):
        display(Markdown(banner))


def titled_model_estimate(params: NotebookParameters) -> pd.DataFrame:
    """The notebook's own model (a Qwen2.5 shape) at this run's method, batch and length on a T4 (fp16),
    by memory.estimate from its shape alone: the figures the prose speaks of, whichever model this run
    loads, and labelled as estimates."""
    titled = TITLED_MODELS[params.notebook]
    shape = memory.QWEN2_5[titled.shape]
    knobs = dict(batch_size=params.batch_size, seq_len=params.max_length, lora_r=params.lora_r,
                 lora_dropout=params.lora_dropout, gradient_checkpointing=params.gradient_checkpointing)
    est = memory.estimate(shape, params.method, upcast_all_to_fp32=params.upcast_all_to_fp32, **knobs)
    total = shape.total_params()
    training_state = est.adapter_bytes + est.gradient_bytes + est.optimizer_bytes + est.paged_optimizer_bytes
    rows = {
        "parameters (with the 77-intent head)": f"{total:,}",
        "trainable parameters": f"{est.trainable_params:,} ({est.trainable_params / total:.2%})",
        "16-bit weights (parameters x 2 bytes)": f"{2 * total / memory.GB:.2f} GB",
        f"as loaded ({params.method}, get_memory_footprint)": f"{est.footprint_bytes / memory.GB:.2f} GB",
        "trainable weights + gradients + optimizer state": f"{training_state / memory.GB:.2f} GB",
        f"peak training memory (micro-batch {params.batch_size} x {params.max_length} tokens)":
            f"{est.peak_bytes / memory.GIB:.1f} GiB",
    }
    if params.method == "qlora":
        upcast = memory.estimate(shape, params.method, upcast_all_to_fp32=True, **knobs)
        plain = memory.estimate(shape, params.method, upcast_all_to_fp32=False, **knobs)
        rows["upcast_all_to_fp32=True adds"] = f"{(upcast.adapter_bytes - plain.adapter_bytes) / memory.GB:.2f} GB"
    return FullText({f"estimate for {titled.name} (memory.estimate)": rows})


# Model ----------------------------------------------------------------------------------------
def build_model(params: NotebookParameters, bank: data.Banking77, *, quantization_config=None,
                lora_config=None) -> modeling.LoadedModel:
    """The classifier set up for params.method, its head sized to the data's intents, in one call
    (modeling.load_model): what notebooks 02 and 03 do in their cells with load_base, peft's
    get_peft_model and set_model, for code without a notebook (a launched process, a script).

    quantization_config (a `BitsAndBytesConfig`) and lora_config (a peft `LoraConfig`) are the
    notebook's recipe cells; None builds the same defaults. Raises modeling.ModelSetupError (the
    message says the fix)."""
    lora_knobs = ({} if lora_config is not None or params.method == "full" else
                  {"lora_r": params.lora_r, "lora_alpha": params.lora_alpha, "lora_dropout": params.lora_dropout})
    with _loading(params.model_id):
        loaded = modeling.load_model(
            params.model_id, params.method, num_labels=bank.num_labels,
            quantization_config=quantization_config, lora_config=lora_config, **lora_knobs,
            gradient_checkpointing=params.gradient_checkpointing,
            upcast_all_to_fp32=params.upcast_all_to_fp32, seed=params.seed,
            label_names=bank.label_names,
        )
    print(loaded.summary())
    return loaded


def load_base(params: NotebookParameters, bank: data.Banking77, *, quantization_config=None) -> modeling.LoadedModel:
    """`AutoModelForSequenceClassification.from_pretrained(model_id, num_labels=..., dtype=compute dtype,
    quantization_config=...)` with the pitfalls handled (modeling.load_base): the tokenizer's pad token
    (Qwen2 has none: EOS), the new head kept out of the 4-bit quantization and named after the
    intents, a T4's fp16 compute, a Kaggle Model's folder. Raises modeling.ModelSetupError."""
    with _loading(params.model_id):
        return modeling.load_base(params.model_id, params.method, bank.num_labels,
                                  quantization_config=quantization_config, seed=params.seed,
                                  label_names=bank.label_names)


def set_model(loaded: modeling.LoadedModel, model) -> modeling.LoadedModel:
    """`loaded` holding `model` (the peft model the cells built on its base) and counting what trains;
    prints the summary line."""
    loaded.model = model
    loaded.trainable_params, loaded.total_params = modeling.count_parameters(model)
    print(loaded.summary())
    return loaded


def freeze_base(params: NotebookParameters, model):
    """modeling.freeze_base with the notebook's gradient checkpointing (None: the method's default)."""
    with _quiet(warns=_CHECKPOINTING_RENAMED):
        return modeling.freeze_base(model, gradient_checkpointing=params.uses_gradient_checkpointing)


# transformers 5.24 renamed gradient checkpointing to activation checkpointing; peft and modeling.py
# still call the old names, which work until transformers 6. peft's get_peft_model, which the notebooks
# call in a cell, asks `is_gradient_checkpointing`: that notice is hidden for the whole kernel.
_CHECKPOINTING_RENAMED = ((FutureWarning, "`gradient_checkpointing_enable` is deprecated"),
                          (FutureWarning, "`is_gradient_checkpointing` is deprecated"))
warnings.filterwarnings("ignore", message=re.escape(_CHECKPOINTING_RENAMED[1][1]), category=FutureWarning)


@contextmanager
def _loading(model_id: str):
    """Loading a model, its library notices a reader can do nothing about hidden (an offline GGUF model
    is dequantized once into a 16-bit folder: advice on the speed of GGUF matmuls does not apply), and
    transformers' LOAD REPORT said in a sentence when all it lists is the new head."""
    report = _LoadReport(model_id)
    with _quiet(logs=(("transformers.quantizers.quantizer_gguf",
                       "Loading a GGUF checkpoint with its weights packed is fastest in float32"),),
                warns=_CHECKPOINTING_RENAMED, filters=(("transformers.modeling_utils", report),)):
        yield
    if report.new_heads:
        print(f"The classification head ({', '.join(f'`{h}`' for h in sorted(report.new_heads))}) is not in the "
              "checkpoint: it is new and starts untrained.")
    if report.unused_lm_head:
        print("The checkpoint's language-model head (`lm_head`) is not loaded: a classifier does not use it.")


class _LoadReport(logging.Filter):
    """transformers' LOAD REPORT table, when all it lists is a new classification head (and a causal
    LM's `lm_head`, unused by a classifier): dropped and remembered, for build_model to say in a
    sentence. Any other report shows, naming the model by its id rather than its folder."""

    def __init__(self, model_id: str):
        super().__init__()
        self.model_id = model_id
        self.new_heads: set[str] = set()
        self.unused_lm_head = False

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "LOAD REPORT" not in message:
            return True
        rows = re.findall(r"^(\S+)\s*\|\s*([A-Z]+)\s*\|", re.sub(r"\x1b\[[0-9;]*m", "", message), re.M)
        new_head = [key.split(".")[0] for key, status in rows
                    if status == "MISSING" and key.split(".")[0] in modeling.HEAD_NAMES]
        lm_head = [key for key, status in rows if status == "UNEXPECTED" and key.split(".")[0] == "lm_head"]
        if new_head and len(new_head) + len(lm_head) == len(rows):
            self.new_heads.update(new_head)
            self.unused_lm_head = self.unused_lm_head or bool(lm_head)
            return False
        record.msg, record.args = re.sub(r"from: .*", lambda _: f"from: {self.model_id}", message, count=1), ()
        return True


def memory_table(loaded: modeling.LoadedModel) -> pd.DataFrame:
    """The weights' size in 16-bit (2 bytes a parameter) against what was actually loaded, and, for
    a 4-bit model, how the loaded bytes split between packed 4-bit and unquantized weights."""
    sixteen = 2 * loaded.total_params
    rows = {
        "16-bit weights (parameters x 2 bytes)": sixteen,
        f"as loaded ({loaded.method}, get_memory_footprint)": loaded.footprint_bytes,
    }
    packed = other = 0
    dtypes = set()
    for param in loaded.model.parameters():
        if modeling.is_packed_4bit(param):
            packed += param.numel() * param.element_size()
        else:
            other += param.numel() * param.element_size()
            dtypes.add(modeling.dtype_name(param.dtype))
    if packed:
        rows["  of which 4-bit packed linear weights"] = packed
        rows[f"  of which unquantized weights ({', '.join(sorted(dtypes))})"] = other
    table = pd.DataFrame({"bytes": rows})
    table["GB"] = (table["bytes"] / 1e9).round(3)
    table["share of 16-bit"] = (table["bytes"] / sixteen).map("{:.0%}".format)
    return table


_FLAG_WHY = {
    "load_in_4bit": "store the frozen base weights in 4 bits: about a quarter of their 16-bit size",
    "bnb_4bit_quant_type": "nf4 (NormalFloat4) spaces its 16 levels for normally distributed weights, "
                           "which pretrained weights roughly are: less error than plain fp4",
    "bnb_4bit_use_double_quant": "quantize the per-block scaling constants too (8-bit): saves about "
                                 "0.4 bit per parameter, ~0.35 GB on a 7B model",
    "bnb_4bit_compute_dtype": "weights are dequantized to this dtype for each matmul: bf16 on Ampere+, "
                              "fp16 on a T4 (no native bf16), fp32 on CPU",
    "llm_int8_skip_modules": "modules left unquantized: the new classification head must train in "
                             "full precision (transformers would quantize BERT's `classifier`)",
}


def quantization_table(loaded: modeling.LoadedModel) -> pd.DataFrame:
    """Each BitsAndBytesConfig flag the model was loaded with, its value, and why it is set."""
    values = modeling.quantization_settings(modeling.base_model(loaded.model).config)
    if values is None:
        return FullText({"value": {"quantization": "none"},
                             "why": {"quantization": f"method={loaded.method!r} loads the base unquantized"}})
    return FullText({"value": {flag: str(values.get(flag)) for flag in _FLAG_WHY}, "why": _FLAG_WHY})


def weights_table(loaded: modeling.LoadedModel) -> pd.DataFrame:
    """What preparing for k-bit training left behind: which weights are 4-bit, which frozen, which
    train (and in which dtype), and whether gradient checkpointing is on."""
    groups: dict[tuple, list] = {}
    for name, param in loaded.model.named_parameters():
        packed = modeling.is_packed_4bit(param)
        count = modeling.parameter_count(param)
        if param.requires_grad:
            kind = "trainable: head" if any(f"{h}." in name for h in modeling.HEAD_NAMES) else "trainable: LoRA adapters"
        else:
            kind = "frozen: 4-bit packed" if packed else "frozen: not quantized (norms, embeddings, ...)"
        quant_type = getattr(param.quant_state, "quant_type", "4-bit") if packed else None
        dtype = f"{quant_type} (stored as uint8)" if packed else modeling.dtype_name(param.dtype)
        entry = groups.setdefault((kind, dtype), [0, 0])
        entry[0] += 1
        entry[1] += count
    table = pd.DataFrame([{"weights": kind, "dtype": dtype, "tensors": n, "parameters": count}
                          for (kind, dtype), (n, count) in sorted(groups.items())])
    base = modeling.base_model(loaded.model)
    checkpointing = getattr(base, "is_activation_checkpointing", None)
    if checkpointing is None:  # transformers < 5.24
        checkpointing = getattr(base, "is_gradient_checkpointing", False)
    print("gradient checkpointing: on" if checkpointing else "gradient checkpointing: off (the parameters' "
          "gradient_checkpointing turned it off; QLoRA's default is on, to fit a 7B's activations on a T4)")
    return table


# Tokens ---------------------------------------------------------------------------------------
def tokenize_splits(params: NotebookParameters, bank: data.Banking77, loaded: modeling.LoadedModel):
    """Token ids without padding (each batch is padded to its own longest row later)."""
    train_rows = data.tokenize(bank.train, loaded.tokenizer, max_length=params.max_length)
    test_rows = data.tokenize(bank.test, loaded.tokenizer, max_length=params.max_length)
    lengths = np.asarray(train_rows["length"])
    print(f"training tokens per utterance: median {np.median(lengths):.0f}, 95th percentile "
          f"{np.percentile(lengths, 95):.0f}, max {lengths.max()} (max_length={params.max_length}; "
          f"{np.mean(lengths >= params.max_length):.1%} truncated)")
    return train_rows, test_rows


# Training -------------------------------------------------------------------------------------
def train_config(params: NotebookParameters, train_examples: int, model_parameters: int) -> training.TrainConfig:
    """The method's defaults (training.default_train_config) with this notebook's knobs; a learning rate
    left None is set by the model's size (defaults.learning_rate). Under a launcher the effective batch
    is split over its processes (distributed.split_batch)."""
    batch_size, accumulation = split_batch(params.batch_size, params.gradient_accumulation, launched_processes())
    handing_over = launched_processes() == 1 and gpus_to_train_on(params.use_all_gpus) > 1
    steps = math.ceil(math.ceil(train_examples / params.batch_size) / params.gradient_accumulation) * params.epochs
    return training.default_train_config(
        params.method, output_dir=str(params.checkpoint_dir), epochs=params.epochs,
        batch_size=batch_size, gradient_accumulation=accumulation,
        learning_rate=params.learning_rate_for(model_parameters), max_length=params.max_length, seed=params.seed,
        save_steps=params.save_steps, logging_steps=max(1, min(50, int(steps) // 40)),
        # the notebook's own process only hands training to launched processes when several GPUs train: graphs
        # there would be recorded for nothing (each launched process decides, and says, for itself)
        cuda_graphs=False if params.cuda_graphs is None and handing_over else params.cuda_graphs,
    )


def show_warmup(args, train_examples: int) -> None:
    """Print what `warmup_steps` means for these arguments: transformers 5 reads a number below 1 as
    a share of the optimizer steps, which `warmup_steps=0.06` alone does not say."""
    print(f"warmup_steps={_warmup(args, train_examples)}, then linear decay to 0")


def _warmup(args, train_examples: int) -> str:
    """warmup_steps as transformers 5 reads it: a number below 1 is a share of the optimizer steps, which
    `warmup_steps 0.06` alone does not say."""
    share = args.warmup_steps
    if share >= 1:
        return f"{int(share)} steps"
    steps = args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * math.ceil(
        math.ceil(train_examples / args.per_device_train_batch_size) / args.gradient_accumulation_steps))
    warmup = args.get_warmup_steps(steps)
    return f"{share!r} ({share:.0%} of the {steps:,} steps: {warmup:,} step{'' if warmup == 1 else 's'})"


def train_model(params: NotebookParameters, loaded: modeling.LoadedModel, train_rows,
                trainer=None) -> training.TrainStats:
    """Train `trainer` (the notebook's; None: training.build_trainer builds one) with what the series
    adds around `trainer.train()`: resuming an interrupted run from its last checkpoint, the OOM retry
    or advice, the measurements; then show them and the loss curve. With several GPUs visible and
    params.use_all_gpus, train data-parallel on all of them instead (all_gpus.train_in_processes: each
    process builds its Trainer from the same factories) at the same effective batch."""
    processes = gpus_to_train_on(params.use_all_gpus)
    if processes > 1:
        from .all_gpus import train_in_processes

        if trainer is not None:
            training.release(trainer)  # the launched processes train; this one's Trainer stays unused
        stats = train_in_processes(params, loaded, processes)
    else:
        stats = train_in_this_process(params, loaded, train_rows, trainer)
    steps = (f"steps {stats.resumed_from_step + 1}-{stats.steps} (resumed from checkpoint-{stats.resumed_from_step})"
             if stats.resumed_from_step else f"{stats.steps} steps")
    print(f"trained {steps} in {stats.train_seconds:.0f} s on {stats.processes} "
          f"{'process' if stats.processes == 1 else 'GPUs'}: {stats.examples_per_second:.1f} "
          f"examples/s, {stats.tokens_per_second:.0f} real tokens/s, {stats.padding_share:.0%} padding, "
          f"peak memory {stats.peak_memory_bytes / 2**30:.2f} GiB ({stats.peak_memory_kind}"
          + (f", {stats.peak_reserved_bytes / 2**30:.2f} GiB reserved" if stats.peak_reserved_bytes else "") + "); "
          f"final loss {stats.final_loss:.3f}" + (
              f"; {len(stats.recoveries)} divergence(s) rolled back, the learning rate lowered "
              f"{training.format_learning_rate(stats.recoveries[0]['old_learning_rate'])} -> "
              f"{training.format_learning_rate(stats.peak_learning_rate)}" if stats.recoveries else ""))
    record = {"run_name": params.notebook, "method": loaded.method, "model_id": loaded.model_id,
              "training": {"losses": stats.losses, "loss_examples_seen": stats.loss_examples_seen}}
    plots.plot_loss_curves([record], path=params.output_dir / LOSS_FILE)
    return stats


def train_in_this_process(params: NotebookParameters, loaded: modeling.LoadedModel, train_rows,
                          trainer=None) -> training.TrainStats:
    """training.train with the notebook's knobs and Trainer: one process, or one of a launcher's."""
    config = train_config(params, len(train_rows), loaded.total_params)
    _drop_finished_checkpoints(config.output_dir)
    # On CPU bitsandbytes runs a paged optimizer unpaged (paging only moves state out of GPU memory);
    # checkpoints saved less than a second apart make transformers doubt the file system's clock.
    with _quiet(logs=(("transformers.trainer_utils", "mtime may not be reliable on this filesystem"),),
                warns=((UserWarning, "Paged optimizers are not supported on CPU"),)):
        return training.train(loaded, train_rows, config, trainer)


def train_from_spec(spec_path: Path) -> None:
    """One process of all_gpus.train_in_processes (`python -m qlora_helpers.notebook.experiment SPEC`):
    load, tokenize and train as the notebook does, on this process's share of every batch."""
    from . import all_gpus

    params, quantization, lora = all_gpus.read_spec(spec_path)
    bank = load_data(params)
    loaded = build_model(params, bank, quantization_config=quantization, lora_config=lora)
    train_rows, _ = tokenize_splits(params, bank, loaded)
    all_gpus.save_trained(spec_path, loaded, train_in_this_process(params, loaded, train_rows))


def _drop_finished_checkpoints(folder: str) -> None:
    """A checkpoint from a run that already finished would 'resume' into zero steps (and zero
    throughput): start afresh instead. An interrupted run's checkpoint is kept and resumed."""
    folder = Path(folder)
    if not folder.is_dir() or not is_main_process():
        return
    last = training.last_complete_checkpoint(folder)
    state_file = Path(last) / "trainer_state.json" if last else None
    if state_file and state_file.is_file():
        state = json.loads(state_file.read_text())
        if state.get("max_steps") and state.get("global_step", 0) >= state["max_steps"]:
            print(f"{folder} holds a finished run's checkpoint: training from scratch instead.")
            shutil.rmtree(folder)


# Evaluation -----------------------------------------------------------------------------------
def evaluate_on_test(params: NotebookParameters, loaded: modeling.LoadedModel, test_rows,
                     bank: data.Banking77) -> evaluation.Evaluation:
    """Accuracy and macro-F1 on the test rows (never seen in training), naming any intent the test
    rows lack (macro-F1 leaves it out)."""
    result = evaluation.evaluate(loaded.model, test_rows, loaded.tokenizer, bank.label_names,
                                 batch_size=max(64, params.batch_size * 2))
    print(f"test accuracy {result.accuracy:.2%}, macro-F1 {result.macro_f1:.3f} "
          f"on {len(test_rows):,} examples (chance: {1 / bank.num_labels:.1%})")
    if result.absent_intents:
        print(f"{len(result.absent_intents)} intents have no test rows and are left out of macro-F1: "
              f"{', '.join(result.absent_intents)}")
    return result


def confused_pairs_table(result: evaluation.Evaluation, k: int = 10) -> pd.DataFrame:
    """The intents most often mistaken for another: how many, and what share of the true intent."""
    table = pd.DataFrame(result.confused_pairs[:k])
    if not table.empty:
        table["share_of_true"] = table["share_of_true"].map("{:.0%}".format)
    return table


def plot_confusions(params: NotebookParameters, result: evaluation.Evaluation, label_names: list[str]) -> None:
    """The full 77x77 matrix and the zoom on the most confused intents, shown and saved as PNG."""
    title = f"{params.notebook}: {params.method} {Path(params.model_id).name}"
    plots.plot_confusion_matrix(result.confusion, label_names, title=f"{title} (rows normalised)",
                                path=params.output_dir / CONFUSION_FILE)
    plots.plot_confusion_zoom(result.confusion, label_names, title=f"{title}: most confused intents",
                              path=params.output_dir / ZOOM_FILE)


def try_examples(loaded: modeling.LoadedModel, bank: data.Banking77, params: NotebookParameters,
                 texts: list[str] | None = None) -> pd.DataFrame:
    texts = texts or ["When will my new card arrive?", "How long does card delivery take?",
                      "I was charged twice for the same coffee", "My card got swallowed by the ATM"]
    predicted = evaluation.predict_texts(loaded.model, loaded.tokenizer, texts, bank.label_names,
                                         max_length=params.max_length)
    return FullText({"text": texts, "predicted intent": predicted})


# Results --------------------------------------------------------------------------------------
def save_results(params: NotebookParameters, loaded: modeling.LoadedModel, stats: training.TrainStats,
                 result: evaluation.Evaluation, bank: data.Banking77) -> dict:
    """Write <run_dir>/<notebook>/results.json (atomically) for 04_comparison and the runner, then
    drop the checkpoints (unless keep_checkpoints): they only serve to resume an interrupted run."""
    record = results.build_result(
        run_name=params.notebook, loaded=loaded, stats=stats, evaluation=result,
        label_names=bank.label_names, demo=params.demo,
        data={"source": _short_source(bank.source), "train_examples": len(bank.train),
              "test_examples": len(bank.test), "max_length": params.max_length},
        config={"parameters": params.as_dict(), "profile": params.profile},
    )
    path = results.write_result(record, results_path(params))
    if not params.keep_checkpoints and is_main_process():
        shutil.rmtree(params.checkpoint_dir, ignore_errors=True)
    print(f"wrote {path.name} to {params.notebook}/ ({record['model_kind']}): accuracy {record['metrics']['accuracy']:.2%}, "
          f"macro-F1 {record['metrics']['macro_f1']:.3f}")
    return record


if __name__ == "__main__":
    import sys

    train_from_spec(Path(sys.argv[1]))
