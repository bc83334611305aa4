"""One round's secure-aggregation parameters, chosen by the server and checked by every client."""

from __future__ import annotations

import os
from dataclasses import dataclass

from fedstream.common.secagg.encoding import EncodingParams, choose_ring
from fedstream.common.secagg.errors import SecAggError
from fedstream.common.secagg.graph import default_neighbours, default_threshold

DEFAULT_WINDOW = 1 << 18  # words per masked window: 1 MiB of uint32, the size of one upload chunk
MAX_WINDOW = 1 << 24
GRAPH_SEED_BYTES = 32


@dataclass(frozen=True)
class RoundParams:
    """Everything both sides must agree on; maps to one protobuf message of ints, a double and bytes."""

    round_id: int
    clients: int
    graph_seed: bytes
    neighbours: int
    threshold: int
    clip: float
    bits: int
    weight_bound: int
    ring_bits: int
    vector_length: int
    window: int = DEFAULT_WINDOW

    @classmethod
    def create(
        cls,
        round_id: int,
        clients: int,
        model_numel: int,
        clip: float,
        bits: int = 16,
        weight_bound: int = 1 << 16,
        neighbours: int | None = None,
        threshold: int | None = None,
        window: int = DEFAULT_WINDOW,
    ) -> "RoundParams":
        """Server side: defaults for K and T, a fresh graph seed, the ring for N clients; checked like a client would."""
        k = default_neighbours(clients) if neighbours is None else min(neighbours, clients - 1)
        ring, _ = choose_ring(clients, bits, weight_bound)
        params = cls(
            round_id=round_id,
            clients=clients,
            graph_seed=os.urandom(GRAPH_SEED_BYTES),
            neighbours=k,
            threshold=default_threshold(k) if threshold is None else threshold,
            clip=clip,
            bits=bits,
            weight_bound=weight_bound,
            ring_bits=ring,
            vector_length=model_numel + 1,
            window=window,
        )
        params.check()
        return params

    @property
    def encoding(self) -> EncodingParams:
        return EncodingParams(self.clip, self.bits, self.weight_bound, self.ring_bits)

    @property
    def word_bytes(self) -> int:
        return self.ring_bits // 8

    def window_words(self, offset: int) -> int:
        """How many words the window starting at `offset` holds (the last one may be short)."""
        return min(self.window, self.vector_length - offset)

    def check(self) -> None:
        """Refuses parameters that are unsafe or inconsistent, naming the value and the fix."""
        if not 0 <= self.round_id < 2**64:
            raise SecAggError(f"round id {self.round_id}; expected 0..2^64-1")
        if not 2 <= self.clients < 2**32:
            raise SecAggError(f"{self.clients} clients; secure aggregation needs at least 2")
        if len(self.graph_seed) != GRAPH_SEED_BYTES:
            raise SecAggError(f"graph seed has {len(self.graph_seed)} bytes; expected {GRAPH_SEED_BYTES}")
        if not 2 <= self.neighbours <= self.clients - 1 or (self.neighbours < self.clients - 1 and self.neighbours % 2):
            raise SecAggError(f"K={self.neighbours} neighbours for {self.clients} clients; expected an even K in 2..N-2, or N-1")
        if not (self.neighbours < 2 * self.threshold and self.threshold <= self.neighbours):
            raise SecAggError(
                f"threshold T={self.threshold} with K={self.neighbours}; expected K/2 < T <= K so the server can never "
                "collect T shares of both secrets of one client"
            )
        encoding = self.encoding
        if self.clients > encoding.max_clients():
            raise SecAggError(
                f"Z_2^{self.ring_bits} can wrap with {self.clients} clients at B={self.bits}, W={self.weight_bound}; "
                f"at most {encoding.max_clients()} fit"
            )
        if self.vector_length < 2:
            raise SecAggError(f"vector length {self.vector_length}; expected model size + 1 (the weight) >= 2")
        if not 1 <= self.window <= MAX_WINDOW:
            raise SecAggError(f"window of {self.window} words; expected 1..{MAX_WINDOW}")
