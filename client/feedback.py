"""Error feedback for lossy uploads: what compression dropped this round is added to the next round's delta.

Top-k sends 1% of a delta; without feedback the other 99% is lost for good and training stalls. With it the
client keeps residual = (delta + residual) − decode(encode(delta + residual)) per tensor and adds it to the next
delta, so every coordinate is eventually sent (Seide et al. 2014; Karimireddy et al. 2019). The residual costs
one float copy of the model, kept only for tensors that travel in a lossy codec.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Mapping

import torch

from fedstream.common.codecs.plan import Chooser, manifest_of, tensor_spec
from fedstream.common.proto import coordinator_pb2 as pb


@dataclass
class EncodedUpdate:
    """An upload ready to stream, and the residual to keep once the server accepts it."""

    manifest: pb.Manifest
    buffers: list
    residual: "OrderedDict[str, torch.Tensor]" = field(default_factory=OrderedDict)

    def residual_norm(self) -> float:
        return float(sum(float(torch.sum(r.double() ** 2)) for r in self.residual.values()) ** 0.5)


class ErrorFeedback:
    """The residual of this client's last accepted lossy upload."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.residual: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.run_id = ""

    def reset(self) -> None:
        self.residual = OrderedDict()

    def bind(self, run_id: str, enabled: bool) -> None:
        """Follows the server's setting; a residual from another run (a restarted server) is dropped."""
        if run_id != self.run_id or not enabled:
            self.reset()
        self.run_id, self.enabled = run_id, enabled

    def encode(self, delta: "OrderedDict[str, torch.Tensor]", choose: Chooser,
               masks: Mapping[str, torch.Tensor] | None = None) -> EncodedUpdate:
        """Encodes delta + residual tensor by tensor; overwrites delta's lossy tensors with their new residual."""
        masks = masks or {}
        specs, buffers, residual = [], [], OrderedDict()
        for name, tensor in delta.items():
            codec = choose(name, tensor)
            lossy = tensor.dtype.is_floating_point and not codec.lossless and self.enabled
            if lossy and name in self.residual:
                tensor.add_(self.residual[name].to(tensor.dtype))
            if name in masks:
                tensor.masked_fill_(~masks[name], 0)
            data = codec.encode(tensor)
            if lossy:
                sent = codec.decode(bytearray(data), tensor.dtype, tuple(tensor.shape))
                aliased = isinstance(data, memoryview)  # a view may share the delta's storage: keep it intact
                residual[name] = tensor - sent if aliased else tensor.sub_(sent)
            specs.append(tensor_spec(name, tensor, codec, data))
            buffers.append(data)
        return EncodedUpdate(manifest_of(specs), buffers, residual)

    def commit(self, update: EncodedUpdate) -> None:
        """The server accepted the upload: its residual becomes the one added next round."""
        if self.enabled:
            self.residual = update.residual
