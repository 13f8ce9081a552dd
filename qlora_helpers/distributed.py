"""Data-parallel training on every visible GPU (e.g. Kaggle's "GPU T4 x2") through DDP.

Launched with `accelerate launch` or `torchrun`, each process holds a whole copy of the model on its
own GPU (a 4-bit model is placed whole, not split across GPUs by device_map="auto"), the Trainer
synchronises gradients, evaluation is sharded and gathered, and only the main process writes files.
A single process (no launcher) behaves exactly as before.
"""
from __future__ import annotations

import math
import os

import numpy as np
import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def launched_processes() -> int:
    """The processes a launcher (torchrun, accelerate) started for this job, known before the
    process group is set up (the Trainer sets it up); 1 without a launcher."""
    return int(os.environ.get("WORLD_SIZE", 1))


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main_process() -> bool:
    """True in a single process and in rank 0: the one process that writes results and plots."""
    return int(os.environ.get("RANK", rank())) == 0


def local_device() -> str:
    """This process's device: `cuda:<LOCAL_RANK>` under a launcher, `cuda` alone, else `cpu`."""
    if not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"


def shard(indices: np.ndarray) -> np.ndarray:
    """This process's share of `indices` (every world_size-th one): a disjoint cover of all of them."""
    return indices[rank()::world_size()]


def all_gather(value) -> list:
    """Every process's `value` (any picklable object), in rank order: the one collective this
    package uses. An object collective works under NCCL and gloo alike, whereas a tensor collective
    under NCCL refuses CPU tensors ("No backend type associated with device type cpu"). NCCL moves
    the pickled bytes through the current CUDA device, so that is set to this process's GPU first.
    """
    if world_size() == 1:
        return [value]
    if torch.cuda.is_available() and dist.get_backend() == "nccl":
        torch.cuda.set_device(torch.device(local_device()))
    pieces: list = [None] * world_size()
    dist.all_gather_object(pieces, value)
    return pieces


def gather_shards(local: np.ndarray, total: int) -> np.ndarray:
    """Reassemble the per-process results of `shard(np.arange(total))` into one array, in order."""
    if world_size() == 1:
        return local
    result = np.empty(total, dtype=local.dtype)
    for process, piece in enumerate(all_gather(local)):
        result[process::world_size()] = piece
    return result


def sum_across_processes(values: list[int]) -> list[int]:
    """Totals over all processes (e.g. examples trained on), for throughput of the whole job."""
    return [int(sum(column)) for column in zip(*all_gather(list(values)))]


def mean_across_processes(value: float) -> float:
    """The mean of `value` over all processes, the same float in each (each averages the same gathered
    list in rank order), so a decision taken from it is the same everywhere; a value that is not finite
    in any process (NaN, inf) is the result, so one process's NaN stops them all alike."""
    values = [float(v) for v in all_gather(float(value))]
    return next((v for v in values if not math.isfinite(v)), sum(values) / len(values))


def end_process_group() -> None:
    """Shut down the process group the Trainer set up, if any, before the process exits (else
    NCCL warns that resources leaked)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def gpus_to_train_on(use_all_gpus: bool = True) -> int:
    """How many data-parallel processes a notebook's training cell runs: every visible GPU when
    there are several (Kaggle's "GPU T4 x2") and `use_all_gpus`; else 1 (a CPU, one GPU, or a
    process that a launcher already started)."""
    if not use_all_gpus or "WORLD_SIZE" in os.environ or not torch.cuda.is_available():
        return 1
    return torch.cuda.device_count()


def split_batch(batch_size: int, gradient_accumulation: int, processes: int) -> tuple[int, int]:
    """(micro-batch per process, accumulation) that keep the effective batch
    batch_size x gradient_accumulation when `processes` GPUs share each optimizer step: the defaults
    were chosen by accuracy at their effective batch, so more GPUs must not change it. Fewer
    accumulation steps first (each GPU keeps its micro-batch), else a smaller micro-batch.

    Raises ValueError when neither divides by `processes`, naming settings that do.
    """
    if gradient_accumulation % processes == 0:
        return batch_size, gradient_accumulation // processes
    if batch_size % processes == 0:
        return batch_size // processes, gradient_accumulation
    raise ValueError(
        f"an effective batch of {batch_size} x {gradient_accumulation} cannot be split evenly over "
        f"{processes} GPUs: make batch_size or gradient_accumulation a multiple of {processes} "
        f"(e.g. batch_size={max(processes, batch_size - batch_size % processes)}), or set use_all_gpus=False.")
