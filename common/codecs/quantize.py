"""8-bit quantisation with one scale per block of values and stochastic rounding, so the codec is unbiased.

Wire format for a tensor of n values: ceil(n / BLOCK) float32 scales, then n int8 codes. A value x in a block
with scale s = max|x| / 127 decodes to q·s where q is x/s rounded down or up at random with the probability
that makes E[q·s] = x. Error bound: |decode(encode(x)) − x| < s for every element (s of its own block).
"""

from __future__ import annotations

import secrets
import threading

import numpy as np
import torch

from fedstream.common.codecs.base import Codec, CodecError
from fedstream.common.wire.tensors import numel_of

BLOCK = 256
LEVELS = 127
SLICE_BLOCKS = 4096  # blocks quantised per step: bounds the temporaries to ~1M values whatever the tensor size

_local = threading.local()


def _generator() -> torch.Generator:
    """A private generator per thread: rounding noise never disturbs (or depends on) torch's global RNG."""
    gen = getattr(_local, "generator", None)
    if gen is None:
        gen = torch.Generator().manual_seed(secrets.randbits(62))
        _local.generator = gen
    return gen


def seed(value: int) -> None:
    """Makes this thread's rounding noise reproducible (benchmarks, tests)."""
    _local.generator = torch.Generator().manual_seed(value)


def num_blocks(numel: int) -> int:
    return -(-numel // BLOCK)


def block_scales(flat: torch.Tensor) -> torch.Tensor:
    """max|x| / 127 per BLOCK values of a flat float32 tensor (the last block may be short)."""
    n = flat.numel()
    full = n // BLOCK
    parts = []
    if full:
        parts.append(flat[: full * BLOCK].view(full, BLOCK).abs().amax(dim=1))
    if n > full * BLOCK:
        parts.append(flat[full * BLOCK :].abs().amax().reshape(1))
    if not parts:
        return torch.empty(0, dtype=torch.float32)
    return torch.cat(parts) / LEVELS


def _quantise_slice(values: torch.Tensor, scales: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """int8 codes of values (float32, flat) whose consecutive BLOCK-sized groups share scales."""
    per_value = scales.repeat_interleave(BLOCK)[: values.numel()]
    inverse = torch.where(per_value > 0, 1.0 / per_value, torch.zeros_like(per_value))
    scaled = values * inverse
    noise = torch.rand(values.numel(), generator=gen)
    return torch.floor(scaled.add_(noise)).clamp_(-LEVELS, LEVELS).to(torch.int8)


class Q8Codec(Codec):
    """int8 codes with a float32 scale per 256 values; unbiased, error below its block's scale."""

    name = "q8"
    lossless = False

    def encode(self, tensor: torch.Tensor) -> bytearray:
        flat = tensor.detach().reshape(-1)
        if flat.device.type != "cpu":
            flat = flat.cpu()
        flat = flat.to(torch.float32)
        n = flat.numel()
        nb = num_blocks(n)
        out = bytearray(4 * nb + n)
        if n == 0:
            return out
        scales = block_scales(flat)
        if not torch.isfinite(scales).all():
            raise CodecError(f"q8 cannot encode a tensor holding NaN or Inf ({n} values)")
        np.frombuffer(out, dtype=np.float32, count=nb)[:] = scales.numpy()
        codes = np.frombuffer(out, dtype=np.int8, offset=4 * nb)
        gen = _generator()
        step = SLICE_BLOCKS * BLOCK
        for start in range(0, n, step):
            stop = min(start + step, n)
            block0 = start // BLOCK
            part = _quantise_slice(flat[start:stop], scales[block0 : num_blocks(stop)], gen)
            codes[start:stop] = part.numpy()
        return out

    def decode(self, data: memoryview | bytes | bytearray, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
        n = numel_of(shape)
        nb = num_blocks(n)
        expected = self.max_encoded_bytes(n, dtype)
        if len(data) != expected:
            raise CodecError(f"q8 tensor of shape {list(shape)} needs {expected} bytes "
                             f"({nb} scales and {n} codes), got {len(data)}")
        if n == 0:
            return torch.empty(shape, dtype=dtype)
        scales = torch.from_numpy(np.frombuffer(data, dtype=np.float32, count=nb).copy())
        if not torch.isfinite(scales).all() or bool((scales < 0).any()):
            raise CodecError(f"q8 tensor of shape {list(shape)} carries a negative, NaN or infinite scale")
        codes = torch.from_numpy(np.frombuffer(data, dtype=np.int8, count=n, offset=4 * nb).copy())
        if bool((codes == -128).any()):
            raise CodecError(f"q8 tensor of shape {list(shape)} carries code -128; codes lie in [-127, 127]")
        out = torch.empty(n, dtype=torch.float32)
        step = SLICE_BLOCKS * BLOCK
        for start in range(0, n, step):
            stop = min(start + step, n)
            per_value = scales[start // BLOCK : num_blocks(stop)].repeat_interleave(BLOCK)[: stop - start]
            torch.mul(codes[start:stop].to(torch.float32), per_value, out=out[start:stop])
        return out.to(dtype).reshape(shape)

    def max_encoded_bytes(self, numel: int, dtype: torch.dtype) -> int:
        return 4 * num_blocks(numel) + numel

    def exact_encoded_bytes(self, numel: int, dtype: torch.dtype) -> int:
        return self.max_encoded_bytes(numel, dtype)
