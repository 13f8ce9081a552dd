"""The benchmark's typed configuration: its command-line options, and the training setups it compares.

`Options` is what `python bench/benchmark.py` was asked to do (recorded as "args" in each results
JSON). A `TrainingSetup` is one training configuration timed on a loaded model: `speed_setups` lists,
per method, the tutorial-like recipe, the kaggle-t4 profile's (what notebooks 01-03 run), the
library defaults (qlora_helpers/defaults.py) and faster candidates; `estimator_setup` is the fixed
shape at which measured memory is compared with qlora_helpers.memory.estimate.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from qlora_helpers import defaults, memory, training
from qlora_helpers.runners import profiles

@dataclass
class Options:
    device: str  # "cpu" (tiny shapes, a pipeline check) or "cuda"
    profile: str  # "t4": emulate a T4 on a bigger GPU (fp16, 14.5 GiB, no flash/cuDNN attention); "native"
    sections: list[str]  # which of sections.SECTIONS run, in this order
    cells: list[str]  # "model:method" cells for speed / estimator (empty: the notebooks' three pairs / all)
    only_configs: list[str]  # speed setups to run, by name (empty: all)
    probe_cells: list[str]  # "model:method" cells for the probe section
    memory_snapshot: list[str]  # speed setups (by name) whose first steps' allocator history is saved
    upcast_model: str  # the model the upcast section loads ("7B", or "0.5B" for a quick check)
    build: list[str]  # models the build section saves (and times) up front, e.g. ["1.5B", "7B"]
    steps: int  # optimizer steps per speed setup
    warmup: int  # steps left out of the throughput (first kernels, allocator growth)
    long_steps: int  # steps of the long run of the fastest QLoRA setup that fits (0: none)
    upcast_steps: int  # optimizer steps of the upcast section's training
    rows: int  # rows of each synthetic training set
    est_batch: int  # the estimator section's micro-batch
    est_seq: int  # ... and sequence length (every batch padded to it)
    est_steps: int  # ... and optimizer steps
    out: str  # folder of the results: <tag>.json and <tag>.md
    tag: str  # name of this run's results files
    models_dir: str  # where random checkpoints are saved (and reused by later runs)
    work_dir: str  # the Trainer's output folders (deleted after each setup)

    @property
    def cpu(self) -> bool:
        return self.device == "cpu"


@dataclass(frozen=True)
class TrainingSetup:
    name: str  # the "config" of its results row: "tutorial", "library_default", "b64_dropout0", ...
    train: training.TrainConfig  # the Trainer's knobs: batch, accumulation, max_length, optimizer, rate
    checkpointing: bool  # gradient checkpointing (recompute activations in backward)
    lora_dropout: float  # dropout on the adapters' input; ignored for full fine-tuning
    padded_to_128: bool = False  # every row padded to 128 tokens up front (else batches pad to their longest)
    checkpoint_every: int = 1  # with checkpointing: recompute every layer (1), every other one (2), ...


def kaggle_t4_knobs(method: str) -> dict:
    """The kaggle-t4 profile's knobs for the notebook that trains `method` (what notebooks 01-03 run)."""
    profile = profiles.get_profile("kaggle-t4")
    return next(knobs for knobs in map(profile.parameters, profiles.TRAINING_NOTEBOOKS)
                if knobs["method"] == method)


def default_setup(method: str) -> TrainingSetup:
    """The method's defaults (qlora_helpers/defaults.py), as the notebooks train it."""
    chosen = defaults.for_method(method)
    return TrainingSetup("library_default", training.default_train_config(method), chosen.gradient_checkpointing,
                         chosen.lora_dropout)


def speed_setups(method: str, only: list[str] | None = None) -> list[TrainingSetup]:
    """The setups the speed section compares for `method`, restricted to the names in `only` if given."""
    chosen = defaults.for_method(method)
    base = training.default_train_config(method)
    tutorial = replace(base, batch_size=8, gradient_accumulation=1, max_length=128, group_by_length=False,
                       pad_to_multiple_of=None,
                       optimizer="paged_adamw_8bit" if method == "qlora" else "adamw_torch")
    knobs = kaggle_t4_knobs(method)
    kaggle = replace(base, **{k: knobs[k] for k in ("batch_size", "gradient_accumulation", "max_length",
                                                    "learning_rate") if k in knobs})
    setups = [
        TrainingSetup("tutorial", tutorial, checkpointing=method == "qlora", lora_dropout=0.05, padded_to_128=True),
        TrainingSetup("kaggle_t4_profile", kaggle, chosen.gradient_checkpointing,
                      knobs.get("lora_dropout", chosen.lora_dropout)),
        default_setup(method),
    ]
    if method == "full":
        fused = replace(base, optimizer="adamw_torch_fused")
        setups += [TrainingSetup("b32_fused_adamw", fused, False, 0.0),
                   TrainingSetup("b64_fused_adamw", replace(fused, batch_size=64), False, 0.0)]
    elif method == "lora":
        setups += [TrainingSetup("b32_dropout0", replace(base, batch_size=32), False, 0.0),
                   TrainingSetup("b64_dropout0", replace(base, batch_size=64), False, 0.0)]
    else:
        setups += [TrainingSetup("b32_dropout0", replace(base, batch_size=32), True, 0.0),
                   TrainingSetup("b64_dropout0", replace(base, batch_size=64), True, 0.0),
                   TrainingSetup("b128_dropout0", replace(base, batch_size=128), True, 0.0),
                   TrainingSetup("b16_nockpt_dropout0", replace(base, batch_size=16, max_length=64), False, 0.0),
                   # run2's b64_dropout0 exactly (max_length 128 then): today's peak against run2's 7.53 GiB
                   TrainingSetup("b64_len128_dropout0", replace(base, batch_size=64, max_length=128), True, 0.0)]
    if method != "full":
        setups += lever_setups(method)
    return [s for s in setups if not only or s.name in only]


def lever_setups(method: str) -> list[TrainingSetup]:
    """Ways to make a step cheaper at the method's default batch (issue 12's levers), each to be
    timed in the same run as `library_default`: a fused fp32 AdamW instead of the 8-bit one, less or
    no activation checkpointing, torch.compile of the decoder layers, all of them together, the
    decoder stack replayed as CUDA graphs, and with them checkpointing only the longest batches."""
    chosen = defaults.for_method(method)
    base = training.default_train_config(method)
    fused = replace(base, optimizer="adamw_torch_fused")
    compiled = replace(base, compile_layers=True)
    ckpt = chosen.gradient_checkpointing
    levers = [TrainingSetup("lever_fused_adamw", fused, ckpt, chosen.lora_dropout),
              TrainingSetup("lever_compiled_layers", compiled, ckpt, chosen.lora_dropout)]
    if ckpt:
        levers += [TrainingSetup("lever_compiled_fused_adamw", replace(fused, compile_layers=True), ckpt,
                                 chosen.lora_dropout),
                   TrainingSetup("lever_no_checkpointing", base, False, chosen.lora_dropout),
                   TrainingSetup("lever_half_checkpointing", base, True, chosen.lora_dropout, checkpoint_every=2),
                   TrainingSetup("lever_all_half_checkpointing", replace(fused, compile_layers=True), True,
                                 chosen.lora_dropout, checkpoint_every=2)]
    levers.append(TrainingSetup("lever_all", replace(fused, compile_layers=True), False, chosen.lora_dropout))
    # the decoder stack replayed as CUDA graphs (qlora_helpers/graphs.py), alone and with the fused AdamW
    levers += [TrainingSetup("lever_cuda_graphs", replace(base, cuda_graphs=True), ckpt, chosen.lora_dropout),
               TrainingSetup("lever_cuda_graphs_fused_adamw", replace(fused, cuda_graphs=True), ckpt,
                             chosen.lora_dropout)]
    if ckpt:
        # ... and checkpointing only the batches too long to train without it under a T4's memory, by the
        # estimator, for the 7B (the largest shape this lever is timed on): 64 x 16 tokens
        long_only = memory.tokens_without_checkpointing("7B", method, "T4", batch_size=chosen.batch_size,
                                                        max_length=chosen.max_length)
        levers.append(TrainingSetup("lever_cuda_graphs_fused_adamw_ckpt_long",
                                    replace(fused, cuda_graphs=True, checkpoint_above_tokens=long_only), ckpt,
                                    chosen.lora_dropout))
    return levers


def estimator_setup(method: str, *, batch_size: int, seq_len: int, over_3b_params: bool, cpu: bool) -> TrainingSetup:
    """The method's defaults at a fixed batch x seq_len, without length grouping. Full fine-tuning of a
    model over 3B parameters on a GPU takes 8-bit AdamW: fp32 AdamW (+ its foreach temporaries)
    of a 7B exceeds an H200's 141 GB."""
    chosen = defaults.for_method(method)
    optimizer = "adamw_bnb_8bit" if method == "full" and over_3b_params and not cpu else chosen.optimizer
    train = replace(training.default_train_config(method), batch_size=batch_size, max_length=seq_len,
                    optimizer=optimizer, group_by_length=False)
    return TrainingSetup(f"{method}:estimator", train, chosen.gradient_checkpointing,
                         chosen.lora_dropout if method != "full" else 0.0)
