"""Data-parallel training on every visible GPU (e.g. Kaggle's "GPU T4 x2") through DDP.

Launched with `accelerate launch` or `torchrun`, each process holds a whole copy of the model on its
own GPU (a 4-bit model is placed whole, not split across GPUs by device_map="auto"), the Trainer
synchronises gradients, evaluation is sharded and gathered, and only the main process writes files.
A single process (no launcher) behaves exactly as before.
"""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


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
