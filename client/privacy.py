"""Local differential privacy: the client clips its delta and adds Gaussian noise before anything is sent.

Driven by TrainConfig.clip_norm (C, 0 = off) and TrainConfig.noise_multiplier (σ): the floating tensors of
the delta are scaled together to L2 norm at most C, then N(0, (σ·C)²) is added to every coordinate. The noise
comes from a generator seeded by the OS's secure randomness, never from the round seed the server chose.
Integer tensors (e.g. batch counters) are sent unchanged.
"""

from __future__ import annotations

import math
import secrets
from typing import Mapping

import torch


def delta_norm(delta: Mapping[str, torch.Tensor]) -> float:
    """L2 norm over all floating tensors together."""
    return math.sqrt(sum(float(torch.sum(torch.square(t.double()))) for t in delta.values() if t.dtype.is_floating_point))


def privatize_delta(delta: Mapping[str, torch.Tensor], clip_norm: float, noise_multiplier: float = 0.0,
                    generator: torch.Generator | None = None) -> float:
    """Clips (and noises, if σ > 0) `delta` in place; returns its norm before clipping. C = 0 leaves it alone."""
    if clip_norm < 0 or noise_multiplier < 0 or not math.isfinite(clip_norm) or not math.isfinite(noise_multiplier):
        raise ValueError(f"the server sent clip_norm={clip_norm}, noise_multiplier={noise_multiplier}; both must "
                         "be finite and >= 0")
    if clip_norm == 0:
        if noise_multiplier > 0:
            raise ValueError(f"the server asked for noise (noise_multiplier={noise_multiplier}) without a clip norm; "
                             "local DP needs clip_norm > 0 to bound the sensitivity")
        return delta_norm(delta)
    norm = delta_norm(delta)
    factor = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    if generator is None and noise_multiplier > 0:
        generator = torch.Generator().manual_seed(secrets.randbits(63))
    for tensor in delta.values():
        if not tensor.dtype.is_floating_point:
            continue
        if factor < 1.0:
            tensor.mul_(factor)
        if noise_multiplier > 0:
            dtype = tensor.dtype if tensor.dtype in (torch.float32, torch.float64) else torch.float32
            noise = torch.randn(tensor.shape, generator=generator, dtype=dtype)
            tensor.add_(noise.to(tensor.dtype), alpha=noise_multiplier * clip_norm)
    return norm
