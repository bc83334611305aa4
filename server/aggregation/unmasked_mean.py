"""The mean a secure-aggregation round hands the strategy: Σ nᵢΔᵢ / Σ nᵢ decoded from the unmasked ring sum.

It stands where a StreamingAggregator stands in `RoundUpdates` (`count`, `mean()`), so FedAvg, FedAvgM and the
FedOpt family apply their usual step to it. The ring sum is decoded window by window into the float32 sums
the strategy would get from plain folding; nothing per client exists here.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Mapping

import numpy as np
import torch

from fedstream.common.secagg.encoding import EncodingParams, decode_weight, decode_window
from fedstream.server.aggregation.aggregator import accumulator_dtype


class UnmaskedMean:
    """The decoded mean of one round's survivors; `count` of them, `weight_sum` = Σ nᵢ."""

    def __init__(self, reference: Mapping[str, torch.Tensor], ring_sum: np.ndarray, encoding: EncodingParams,
                 count: int, window: int) -> None:
        numel = sum(t.numel() for t in reference.values())
        if ring_sum.size != numel + 1:
            raise ValueError(f"the unmasked sum has {ring_sum.size} words; the model has {numel} values + 1 weight")
        self._reference = reference
        self._ring_sum = ring_sum
        self._encoding = encoding
        self._window = window
        self.count = count
        self.weight_sum = float(decode_weight(ring_sum[-1:]))

    def mean(self) -> "OrderedDict[str, torch.Tensor]":
        if self.weight_sum <= 0:
            raise ValueError(f"the survivors' example weights sum to {self.weight_sum:g}; nothing to average")
        out: OrderedDict[str, torch.Tensor] = OrderedDict()
        offset = 0
        for name, tensor in self._reference.items():
            target = torch.empty(tensor.numel(), dtype=accumulator_dtype(tensor.dtype))
            flat = target.numpy()
            for start in range(0, tensor.numel(), self._window):
                stop = min(start + self._window, tensor.numel())
                values = decode_window(self._ring_sum[offset + start : offset + stop], self._encoding)
                values /= self.weight_sum
                flat[start:stop] = values
            out[name] = target.reshape(tensor.shape)
            offset += tensor.numel()
        return out
