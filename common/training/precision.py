"""Mixed precision for local training: autocast and, for float16, a gradient scaler.

`bf16` keeps float32's exponent range, so it needs no loss scaling; `fp16` does, and gets a GradScaler. Weights,
optimizer state and the uploaded delta stay float32 either way: only the forward and backward passes run in
the lower precision. On a CPU, torch's autocast runs the same code path (slower than float32 on most CPUs),
which is what lets the CPU-only test suite cover it.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

AMP_CHOICES = ("off", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_amp(amp: str) -> str:
    """amp itself, or ValueError naming the choices."""
    if amp not in AMP_CHOICES:
        raise ValueError(f"amp must be one of {', '.join(AMP_CHOICES)}, got {amp!r}")
    return amp


def autocast(device: torch.device, amp: str) -> AbstractContextManager:
    """The forward pass's context: torch.autocast in amp's dtype, or nothing for off."""
    if check_amp(amp) == "off":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[amp])


def grad_scaler(device: torch.device, amp: str) -> "torch.amp.GradScaler | None":
    """A loss scaler for fp16, None otherwise (bf16 and float32 gradients do not underflow)."""
    if check_amp(amp) != "fp16":
        return None
    if not hasattr(torch.amp, "GradScaler"):
        raise ValueError(f"--amp fp16 needs torch 2.3 or later (this is {torch.__version__}); use --amp bf16")
    return torch.amp.GradScaler(device.type)
