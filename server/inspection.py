"""Checks an upload while it streams: squared L2 norm and NaN/Inf of raw floating tensors, chunk by chunk.

The bytes are in cache right after their CRC, so the check costs one pass over data already at hand instead of
a second read of the whole spool file once the trailer arrives. Tensors whose values need decoding first
(other codecs, or dtypes numpy lacks such as bfloat16) are left for inspect_update to read back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from fedstream.common.manifest import TensorLayout

_NUMPY = {torch.float16: np.float16, torch.float32: np.float32, torch.float64: np.float64}
WINDOW = 1 << 18  # elements widened to float64 at a time (2 MiB)


@dataclass
class NonFinite:
    """Where the first NaN or Inf was seen: the tensor and the first element of the piece that held it."""

    name: str
    element: int


class StreamInspection:
    """Running squared norm over the raw floating tensors of a stream fed in arbitrary pieces."""

    def __init__(self, layout: list[TensorLayout]) -> None:
        self.items = [item for item in layout if item.codec == "raw" and item.dtype in _NUMPY and item.nbytes]
        self.covered = {item.name for item in layout if item.codec == "raw" and item.dtype in _NUMPY}
        self.sq_norm = 0.0
        self.nonfinite: NonFinite | None = None
        self._next = 0
        self._carry = b""
        self._done = [0] * len(self.items)

    def feed(self, position: int, data: memoryview | bytes) -> None:
        """Accounts for data, which sits at byte `position` of the stream."""
        end = position + len(data)
        view = memoryview(data).cast("B") if isinstance(data, memoryview) else memoryview(data)
        while self._next < len(self.items):
            index = self._next
            item = self.items[index]
            item_end = item.offset + item.nbytes
            if item.offset >= end:
                return
            if item_end <= position:
                self._next += 1
                self._carry = b""
                continue
            lo, hi = max(position, item.offset + self._done[index] + len(self._carry)), min(end, item_end)
            if hi > lo:
                self._accumulate(index, view[lo - position : hi - position])
            if hi < item_end:
                return
            self._next += 1
            self._carry = b""

    def _accumulate(self, index: int, piece: memoryview) -> None:
        item = self.items[index]
        dtype = _NUMPY[item.dtype]
        itemsize = np.dtype(dtype).itemsize
        if self._carry:
            take = itemsize - len(self._carry)
            head = self._carry + bytes(piece[:take])
            piece = piece[take:]
            self._carry = b""
            if len(head) < itemsize:
                self._carry = head
                return
            self._add(index, np.frombuffer(head, dtype=dtype))
        whole = len(piece) - len(piece) % itemsize
        if whole:
            self._add(index, np.frombuffer(piece[:whole], dtype=dtype))
        if whole < len(piece):
            self._carry = bytes(piece[whole:])

    def _add(self, index: int, values: np.ndarray) -> None:
        item = self.items[index]
        for start in range(0, len(values), WINDOW):
            part = values[start : start + WINDOW]
            wide = part.astype(np.float64)
            sq = float(np.einsum("i,i->", wide, wide))  # not np.dot: BLAS threads spin on a busy machine
            if not math.isfinite(sq) and self.nonfinite is None:
                self.nonfinite = NonFinite(item.name, self._done[index] // part.itemsize)
            self.sq_norm += sq
            self._done[index] += part.nbytes
