"""Make a bigger GPU behave like a 16 GB T4 where that matters, for reference runs and benchmarks.

A T4 (compute capability 7.5) has no bf16 and no flash or cuDNN attention, and 15,360 MiB of which
about 14.5 GiB are left to PyTorch once the CUDA context is made. `QLORA_EMULATE_GPU=t4` (set by a
runner profile, or by hand) makes every process of a run on a larger GPU (an H200, say):
- pick fp16 compute (`modeling.choose_compute_dtype`), as on a T4;
- cap PyTorch's allocator at 14.5 GiB, so a setting that would not fit a T4 fails here too;
- turn flash and cuDNN attention off (SDPA then runs the memory-efficient kernel, as on a T4);
- keep matmuls in true fp32 where fp32 is used (no TF32, which a T4 lacks).
Speed is the big GPU's, not a T4's: results record both the GPU and the emulated profile.
"""
from __future__ import annotations

import os

import torch

ENV_VAR = "QLORA_EMULATE_GPU"
T4_USABLE_BYTES = int(14.5 * 2**30)  # 15360 MiB on the card, less ~0.5 GiB of CUDA context
PROFILES = ("t4",)


def emulated_gpu() -> str | None:
    """The GPU profile named by $QLORA_EMULATE_GPU ("t4"), or None. Raises ValueError for another name."""
    name = os.environ.get(ENV_VAR, "").strip().lower() or None
    if name is not None and name not in PROFILES:
        raise ValueError(f"{ENV_VAR}={name!r} is not a GPU profile: use one of {', '.join(PROFILES)} or unset it.")
    return name


def apply_t4_profile(device: int | str | torch.device = 0) -> int:
    """Cap the allocator on `device` at a T4's usable memory and turn off what a T4 lacks.

    Returns the cap in bytes. Call it before the model is loaded; calling it again is harmless.
    """
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, T4_USABLE_BYTES / total), device)
    torch.backends.cuda.enable_flash_sdp(False)
    if hasattr(torch.backends.cuda, "enable_cudnn_sdp"):
        torch.backends.cuda.enable_cudnn_sdp(False)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return T4_USABLE_BYTES


def apply_from_environment(device: str | torch.device) -> str | None:
    """Apply the profile $QLORA_EMULATE_GPU names on a CUDA `device`; return its name (or None)."""
    name = emulated_gpu()
    if name == "t4" and torch.device(device).type == "cuda":
        apply_t4_profile(torch.device(device))
        return name
    return None
