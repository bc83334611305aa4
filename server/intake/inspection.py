"""Checks an upload while it streams: squared L2 norm and NaN/Inf of raw floating tensors, chunk by chunk.

The bytes are in cache right after their CRC, so the check costs one pass over data already at hand instead of
a second read of the whole spool file once the trailer arrives. Tensors stored with another codec are left for
inspect_update to read back.

Each window of at most WINDOW elements is squared and summed in float32 (float64 for float64 tensors) by
torch's cascade summation, and the windows' sums add up in a Python float: relative error about 1e-8, at a
third of the cost of widening every element to float64 (measured 30 against 100 us per MiB).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch

from fedstream.common.wire.manifest import TensorLayout

FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
WINDOW = 1 << 18  # elements per partial sum (1 MiB of float32)

# The stream's chunks are read-only bytes; the tensors made over them here are only read.
warnings.filterwarnings("ignore", message="The given buffer is not writable", category=UserWarning,
                        module=__name__)


@dataclass
class NonFinite:
    """Where the first NaN or Inf was seen: the tensor and the first element of the piece that held it."""

    name: str
    element: int


class StreamInspection:
    """Running squared norm over the raw floating tensors of a stream fed in arbitrary pieces."""

    def __init__(self, layout: list[TensorLayout]) -> None:
        self.items = [item for item in layout if item.codec == "raw" and item.dtype in FLOATS and item.nbytes]
        self.covered = {item.name for item in layout if item.codec == "raw" and item.dtype in FLOATS}
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
        itemsize = item.dtype.itemsize
        if self._carry:
            take = itemsize - len(self._carry)
            head = self._carry + bytes(piece[:take])
            piece = piece[take:]
            self._carry = b""
            if len(head) < itemsize:
                self._carry = head
                return
            self._add(index, torch.frombuffer(bytearray(head), dtype=item.dtype))
        whole = len(piece) - len(piece) % itemsize
        if whole:
            self._add(index, torch.frombuffer(piece[:whole], dtype=item.dtype))
        if whole < len(piece):
            self._carry = bytes(piece[whole:])

    def _add(self, index: int, values: torch.Tensor) -> None:
        item = self.items[index]
        for start in range(0, len(values), WINDOW):
            part = values[start : start + WINDOW]
            sq = square_sum(part)
            if not math.isfinite(sq) and self.nonfinite is None:
                self.nonfinite = NonFinite(item.name, self._done[index] // part.element_size())
            self.sq_norm += sq
            self._done[index] += part.numel() * part.element_size()


def square_sum(values: torch.Tensor) -> float:
    """Σ x² of a flat floating tensor: infinite or NaN exactly when the tensor holds Inf or NaN."""
    wide = values if values.dtype in (torch.float32, torch.float64) else values.float()
    sq = float(torch.sum(torch.square(wide)))
    if math.isfinite(sq) or not bool(torch.isfinite(wide).all()):
        return sq
    return float(torch.sum(torch.square(wide.double())))  # finite values whose squares overflow float32
