"""A training notebook's cell on every visible GPU (Kaggle's "GPU T4 x2"), from the notebook's kernel.

`experiment.train_model` calls `train_in_processes` when it sees several GPUs: torchrun starts
`experiment.train_from_spec` once per GPU (`read_spec` and `save_trained` here are its two ends),
each process loads and trains its copy data-parallel (DDP) at the notebook's effective batch, and
the trained weights come back into the notebook's model, which the evaluation cells then use as on
one GPU. `runners/train_all_gpus.py` is the same from a shell.
"""
from __future__ import annotations

import codecs
import dataclasses
import gc
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from .. import atomic, training
from ..distributed import end_process_group, is_main_process
from ..modeling import LoadedModel, base_model, quantization_settings
from .parameters import NotebookParameters

LAUNCH_FOLDER = "all_gpus"  # <run_dir>/<notebook>/all_gpus: the launch's spec and the trained weights
TRAINED_FOLDER = "trained"  # in it: weights.safetensors (the trainable weights) and stats.json
# What each launched process runs: experiment.train_from_spec, the notebook's own steps. Named, not
# imported: experiment calls this module (train_model), so this module must not import experiment.
TRAINING_STEPS_MODULE = "qlora_helpers.notebook.experiment"


def train_in_processes(params: NotebookParameters, loaded: LoadedModel, processes: int) -> training.TrainStats:
    """Train `loaded` data-parallel in `processes` new processes (one per GPU), from the notebook's kernel.

    `accelerate.notebook_launcher` forks the kernel, which must not have touched CUDA yet; a notebook
    has loaded its model onto the GPU by now. So the model moves to CPU memory meanwhile (4-bit
    weights included), torchrun starts the notebook's steps with a spec file (the parameters and the
    model's own quantization and LoRA configs), each process (experiment.train_from_spec) loads and
    trains its copy, the main one writes the trainable weights, and they are loaded into
    `loaded.model`, which moves back to its GPU. The processes' output streams into the cell. Raises
    RuntimeError if they fail (their output above says why); the notebook's model is back on its GPU,
    untrained, either way.
    """
    folder = params.output_dir / LAUNCH_FOLDER
    shutil.rmtree(folder, ignore_errors=True)
    spec = folder / "spec.json"
    lora = getattr(loaded.model, "peft_config", {}).get("default")
    if lora is not None:
        lora.save_pretrained(folder / "lora_config")
    atomic.write_text(spec, json.dumps({
        "parameters": params.as_dict(),
        "quantization_config": quantization_settings(base_model(loaded.model).config),
        "lora_config": str(folder / "lora_config") if lora is not None else None,
    }, indent=1))
    device = next(loaded.model.parameters()).device
    loaded.model.to("cpu")  # the GPU's memory is the launched processes' now
    gc.collect()
    torch.cuda.empty_cache()
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
               "-m", TRAINING_STEPS_MODULE, str(spec)]
    print(f"training on {processes} GPUs: {processes} processes each load the model and train on their share "
          f"of every batch (effective batch {params.batch_size * params.gradient_accumulation}, as on one GPU)")
    try:
        code = _stream(command)
    finally:
        loaded.model.to(device)
    if code != 0:
        raise RuntimeError(f"training on {processes} GPUs failed (exit {code}; the processes' output above "
                           "says why). To train on one GPU instead, set use_all_gpus = False.")
    trained = folder / TRAINED_FOLDER
    _load_trainable(loaded.model, trained / "weights.safetensors")
    stats = training.TrainStats(**json.loads((trained / "stats.json").read_text()))
    shutil.rmtree(folder)
    return stats


def _stream(command: list[str]) -> int:
    """Run `command`, copying its output (stdout and stderr, progress bars included) as it comes.
    An interrupted cell (Kernel > Interrupt) stops the processes too, so none keeps holding a GPU."""
    # One thread a process unless set (torchrun's default, which otherwise prints a banner about it).
    env = {"OMP_NUM_THREADS": "1", **os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    try:
        while chunk := os.read(process.stdout.fileno(), 65536):
            sys.stdout.write(decoder.decode(chunk))
            sys.stdout.flush()
    except BaseException:
        process.terminate()  # torchrun passes the signal on to its workers
        process.wait()
        raise
    return process.wait()


def _load_trainable(model: torch.nn.Module, path: Path) -> None:
    """Copy the trained weights into `model`, which must want exactly these (same names, shapes)."""
    from safetensors.torch import load_file

    weights = load_file(path)
    trainable = {name for name, param in model.named_parameters() if param.requires_grad}
    if set(weights) != trainable:
        raise RuntimeError(f"the trained weights ({len(weights)} tensors) do not match the model's "
                           f"{len(trainable)} trainable ones: {sorted(set(weights) ^ trainable)[:3]}...")
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in weights:
                param.copy_(weights[name])


def read_spec(spec_path: Path) -> tuple[NotebookParameters, object, object]:
    """What one launched process trains (the spec `train_in_processes` wrote): the notebook's
    parameters, and its BitsAndBytesConfig and LoraConfig (None where it has none). Only the main
    process keeps printing; errors still reach stderr from every one."""
    from peft import LoraConfig
    from transformers import BitsAndBytesConfig

    spec = json.loads(spec_path.read_text())
    if not is_main_process():
        sys.stdout = open(os.devnull, "w")
    quantization = BitsAndBytesConfig.from_dict(spec["quantization_config"]) if spec["quantization_config"] else None
    lora = LoraConfig.from_pretrained(spec["lora_config"]) if spec["lora_config"] else None
    return NotebookParameters(**spec["parameters"]), quantization, lora


def save_trained(spec_path: Path, loaded: LoadedModel, stats: training.TrainStats) -> None:
    """The end of one launched process: the main one writes the trainable weights and the training
    measurements where `train_in_processes` reads them; then the process group ends."""
    from safetensors.torch import save_file

    if is_main_process():
        weights = {name: param.detach().to("cpu").contiguous()
                   for name, param in loaded.model.named_parameters() if param.requires_grad}
        with atomic.folder(spec_path.parent / TRAINED_FOLDER) as staging:
            save_file(weights, staging / "weights.safetensors")
            (staging / "stats.json").write_text(json.dumps(dataclasses.asdict(stats)))
    end_process_group()
