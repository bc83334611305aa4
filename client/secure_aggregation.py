"""The client's side of a secure-aggregation round: answers EXCHANGE tasks by phase and builds the masked upload.

One round's protocol state (`SecAggClient`) is kept from the setup to the unmasking answer. A task repeated
for a phase already answered (the reply was lost) gets the same answer again; anything else out of order, and
any request for both shares of one neighbour, aborts the round on this client (`SecAggAbort`): it tells the
server and takes part again from the next round's setup.

Test-only: FEDSTREAM_TEST_SECAGG_EXIT=<phase> makes the process exit abruptly (no Leave) right after it
answered that phase (`secagg/share-keys`, or `secagg/masked-input` once its masked upload was accepted), so
tests can kill a client at a known point of the protocol.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Mapping

import torch

from fedstream.common.proto import coordinator_pb2 as pb
from fedstream.common.secagg import wire
from fedstream.common.secagg.client_protocol import SecAggClient
from fedstream.common.secagg.errors import SecAggAbort, SecAggError
from fedstream.common.secagg.flat import FlatValues
from fedstream.common.wire.tensors import dtype_name

CAPABILITY = "secagg"
MASKED_TENSOR = "secagg.masked"
TEST_EXIT_VARIABLE = "FEDSTREAM_TEST_SECAGG_EXIT"
TEST_EXIT_CODE = 17


class SecureAggregationClient:
    """Phase dispatcher for one client process (the current round's state only)."""

    def __init__(self) -> None:
        self.protocol: SecAggClient | None = None
        self._answers: dict[str, bytes] = {}

    def answer(self, phase: str, payload: bytes) -> bytes:
        """The Exchange payload answering an EXCHANGE task of `phase` (not the masked input: see masked_upload)."""
        if phase == wire.ADVERTISE:
            setup = wire.parse_setup(payload)
            if self.protocol is not None and self.protocol.params == setup.params and phase in self._answers:
                return self._answers[phase]
            try:
                self.protocol = SecAggClient(setup)
            except SecAggAbort:
                self.protocol = None
                raise
            self._answers = {}
            return self._remember(phase, wire.public_keys_bytes(self.protocol.advertise_keys()))
        if phase in self._answers:
            return self._answers[phase]
        protocol = self._current(phase)
        if phase == wire.SHARE_KEYS:
            return self._remember(phase, wire.share_keys_bytes(protocol.share_keys(wire.parse_neighbour_keys(payload))))
        if phase == wire.UNMASKING:
            return self._remember(phase, wire.unmask_response_bytes(protocol.unmask(wire.parse_unmask_request(payload))))
        raise SecAggError(f"the server sent an EXCHANGE task of unknown phase {phase[:64]!r}; this client speaks "
                          f"{', '.join(wire.PHASES)}")

    def receive_shares(self, payload: bytes) -> None:
        """The masked-input task's payload: the boxes the neighbours addressed to this client."""
        self._current(wire.MASKED_INPUT).receive_shares(wire.parse_forwarded_shares(payload))

    def masked_upload(self, delta: Mapping[str, torch.Tensor], weight: int) -> tuple[pb.Manifest, Iterator[bytes]]:
        """The manifest of the masked vector (one int32/int64 tensor) and its bytes, computed window by window."""
        protocol = self._current(wire.MASKED_INPUT)
        params = protocol.params
        values = FlatValues([t.detach().to("cpu", torch.float32).numpy() for t in delta.values()])
        windows = protocol.masked_input(values, weight)
        dtype = torch.int32 if params.ring_bits == 32 else torch.int64
        nbytes = params.vector_length * params.word_bytes
        manifest = pb.Manifest(tensors=[pb.TensorSpec(name=MASKED_TENSOR, dtype=dtype_name(dtype),
                                                      shape=[params.vector_length], codec="raw", byte_length=nbytes)],
                               total_bytes=nbytes)
        return manifest, (w.words for w in windows)

    def forget(self) -> None:
        self.protocol = None
        self._answers = {}

    def _current(self, phase: str) -> SecAggClient:
        if self.protocol is None:
            raise SecAggAbort(f"the server sent phase {phase} before this client got a round setup")
        return self.protocol

    def _remember(self, phase: str, answer: bytes) -> bytes:
        self._answers[phase] = answer
        return answer


def exit_for_test(phase: str) -> None:
    """Test-only: exits without leaving once `phase` was answered, when FEDSTREAM_TEST_SECAGG_EXIT names it."""
    if os.environ.get(TEST_EXIT_VARIABLE) == phase:
        os._exit(TEST_EXIT_CODE)


__all__ = ["CAPABILITY", "SecureAggregationClient", "exit_for_test"]
