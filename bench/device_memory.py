"""Allocator measurements and the T4 memory cap, as one object the benchmark passes around.

With --profile t4 a cell (one model x method) must fit a T4's usable memory (14.5 GiB,
qlora_helpers/emulation.py). The allocator does not hand back everything a finished Trainer held,
so each cell starts by noting what earlier cells left allocated (its baseline) and the cap moves up
by as much: every cell gets a T4's memory of its own, and peaks are reported above the baseline.
On CPU there is no cap, nothing is allocated on a device, and peaks are the process's peak RSS.
"""
from __future__ import annotations

import gc
import os
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from qlora_helpers import emulation, training


def free() -> None:
    """Collect garbage and return the allocator's cached blocks to the device."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def allocated() -> int:
    """Bytes the CUDA allocator holds now (0 on CPU)."""
    return torch.cuda.memory_allocated() if torch.cuda.is_available() else 0


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak() -> int:
    """Peak bytes since `reset_peak`: CUDA's max allocated, or on CPU the process's peak RSS."""
    return training.peak_memory()[0]


@dataclass
class MemoryCap:
    cap_bytes: int | None = None  # a T4's usable memory when emulating one; None: the whole device
    baseline_bytes: int = 0  # allocated before this cell's model loaded (left over by earlier cells)

    @classmethod
    def for_profile(cls, profile: str) -> MemoryCap:
        """"t4" on CUDA: cap the allocator and turn off what a T4 lacks (emulation.apply_t4_profile);
        otherwise no cap."""
        if profile == "t4" and torch.cuda.is_available():
            return cls(cap_bytes=emulation.apply_t4_profile(0))
        return cls()

    def start_cell(self) -> None:
        """Take what is allocated now as the new cell's baseline and give the cell its cap above it."""
        free()
        self.baseline_bytes = allocated()
        self._apply()

    def lift(self) -> None:
        """Drop the cap for the rest of the run (cells that cannot fit a T4, measured anyway)."""
        self.cap_bytes = None
        self._apply()

    @contextmanager
    def lifted(self):
        """No cap inside (building a random checkpoint is not what the cap is about), then back on."""
        if torch.cuda.is_available():
            torch.cuda.set_per_process_memory_fraction(1.0)
        try:
            yield
        finally:
            free()
            self._apply()

    @contextmanager
    def loading(self):
        """Around a model load: `load_model` applies $QLORA_EMULATE_GPU's T4 cap itself (the
        notebooks' path), which would undo a lifted cap and ignore the cell's baseline. With the cap
        lifted the variable is hidden during the load; afterwards this cap is put back either way."""
        hidden = os.environ.pop(emulation.ENV_VAR, None) if self.cap_bytes is None else None
        try:
            yield
        finally:
            if hidden is not None:
                os.environ[emulation.ENV_VAR] = hidden
            self._apply()

    def _apply(self) -> None:
        if not torch.cuda.is_available():
            return
        fraction = 1.0
        if self.cap_bytes is not None:
            total = torch.cuda.get_device_properties(0).total_memory
            fraction = min(1.0, (self.cap_bytes + self.baseline_bytes) / total)
        torch.cuda.set_per_process_memory_fraction(fraction)
