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
    if amp not in AMP_CHOICES:
        raise ValueError(f"amp must be one of {', '.join(AMP_CHOICES)}, got {amp!r}")
    return amp


def autocast(device: torch.device, amp: str) -> AbstractContextManager:
    if check_amp(amp) == "off":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[amp])


def grad_scaler(device: torch.device, amp: str) -> torch.amp.GradScaler:
    """A scaler that is a no-op unless amp is fp16 (bf16 and float32 gradients do not underflow)."""
    return torch.amp.GradScaler(device.type, enabled=check_amp(amp) == "fp16")
