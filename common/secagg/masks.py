"""Masks expanded from 32-byte seeds by ChaCha20, one window at a time, and folded into a window in the ring.

The mask of seed s is the ChaCha20 keystream under key s (nonce 0) read as little-endian uint32 or uint64
words; word i of the mask is bytes [i·w, (i+1)·w) of the stream, so any window is reached by setting the
block counter, never by expanding what comes before it. One `MaskExpander` holds one window-sized scratch
buffer: nothing model-sized is ever built. The 32-bit block counter bounds a mask to 2^32 · 64 bytes (256 GiB).
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from fedstream.common.secagg.errors import SecAggError

SEED_BYTES = 32
_BLOCK = 64
_MAX_BLOCKS = 2**32


def ring_dtype(ring_bits: int) -> np.dtype:
    """uint32 for Z_2^32, uint64 for Z_2^64 (numpy's unsigned arithmetic wraps, which is the ring's addition)."""
    if ring_bits == 32:
        return np.dtype("<u4")
    if ring_bits == 64:
        return np.dtype("<u8")
    raise SecAggError(f"ring of {ring_bits} bits is not supported; use 32 or 64")


class MaskExpander:
    """Expands windows of seeded masks into a reused scratch buffer and adds or subtracts them in place."""

    def __init__(self, ring_bits: int, window: int) -> None:
        if window < 1:
            raise SecAggError(f"mask window of {window} words; expected at least 1")
        self.dtype = ring_dtype(ring_bits)
        self.window = window
        self._scratch = np.empty(window, dtype=self.dtype)
        self._zeros = bytes(window * self.dtype.itemsize)

    def expand(self, seed: bytes, start: int, count: int) -> np.ndarray:
        """Words [start, start+count) of the seed's mask, in the scratch buffer (valid until the next call)."""
        if len(seed) != SEED_BYTES:
            raise SecAggError(f"mask seed has {len(seed)} bytes; expected {SEED_BYTES}")
        if not 0 <= count <= self.window or start < 0:
            raise SecAggError(f"mask window [{start}, {start + count}) is outside 0.. with at most {self.window} words")
        width = self.dtype.itemsize
        block, skip = divmod(start * width, _BLOCK)
        nbytes = count * width
        if block + (skip + nbytes + _BLOCK - 1) // _BLOCK > _MAX_BLOCKS:
            raise SecAggError(f"mask window ends past word {start + count}; ChaCha20's counter covers 256 GiB per seed")
        encryptor = Cipher(algorithms.ChaCha20(seed, block.to_bytes(4, "little") + bytes(12)), None).encryptor()
        if skip:
            encryptor.update(bytes(skip))  # discard the part of the first block before `start`
        out = self._scratch[:count]
        encryptor.update_into(memoryview(self._zeros)[:nbytes], memoryview(out).cast("B"))
        return out

    def add(self, window: np.ndarray, seed: bytes, start: int, sign: int = 1) -> None:
        """window += sign · mask[start : start+len(window)] in the ring, in place."""
        if window.dtype != self.dtype:
            raise SecAggError(f"window of dtype {window.dtype}; this ring uses {self.dtype}")
        for offset in range(0, window.size, self.window):
            part = window[offset : offset + self.window]
            mask = self.expand(seed, start + offset, part.size)
            if sign > 0:
                np.add(part, mask, out=part)
            else:
                np.subtract(part, mask, out=part)
