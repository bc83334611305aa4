"""A model's tensors read as one flat vector, window by window, without concatenating them."""

from __future__ import annotations

from typing import Sequence

import numpy as np


class FlatValues:
    """Flat arrays (one per tensor, in model order) seen as one vector: `size` and slicing `[start:stop]`."""

    def __init__(self, arrays: Sequence[np.ndarray]) -> None:
        self._arrays = [np.asarray(a).reshape(-1) for a in arrays]
        self._starts = np.cumsum([0] + [a.size for a in self._arrays])
        self.size = int(self._starts[-1])

    def __getitem__(self, window: slice) -> np.ndarray:
        start, stop, step = window.indices(self.size)
        if step != 1:
            raise ValueError(f"FlatValues reads contiguous windows only; got step {step}")
        pieces = []
        first = int(np.searchsorted(self._starts, start, side="right")) - 1
        for i in range(max(first, 0), len(self._arrays)):
            lo, hi = int(self._starts[i]), int(self._starts[i + 1])
            if lo >= stop:
                break
            pieces.append(self._arrays[i][max(start, lo) - lo : min(stop, hi) - lo])
        if len(pieces) == 1:
            return pieces[0]
        return np.concatenate(pieces) if pieces else np.empty(0, dtype=np.float32)
