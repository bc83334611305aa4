"""Each sampled client's neighbours: a Harary graph H(K, N) over a permutation derived from the round seed.

SecAgg+ (Bell et al. 2020, section 4) replaces Bonawitz et al.'s complete graph with a K-regular graph of
degree O(log N). The permutation is a function of the round seed alone (HMAC-SHA256 of each index, sorted), so
the server commits to it when it sends the seed and cannot choose neighbours after seeing keys or dropouts.
Clients are numbered 1..N (their Shamir x-coordinates); the server maps client ids to these numbers.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from dataclasses import dataclass

from fedstream.common.secagg.errors import SecAggError

DEFAULT_DROPOUT = 0.1
DEFAULT_FAILURE = 1e-6


@dataclass(frozen=True)
class NeighbourGraph:
    """Who shares keys and pairwise masks with whom in one round."""

    n: int
    k: int
    neighbours: dict[int, frozenset[int]]

    def of(self, index: int) -> frozenset[int]:
        if index not in self.neighbours:
            raise SecAggError(f"client index {index} is not in this round; expected 1..{self.n}")
        return self.neighbours[index]


def _binomial_cdf(k: int, n: int, p: float) -> float:
    """P(Binomial(n, p) <= k), exact for the small n used here."""
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(0, k + 1))


def default_threshold(k: int) -> int:
    """T = floor(K/2) + 1: a server can never collect T shares of both secrets of one client (2T > K)."""
    return k // 2 + 1


def default_neighbours(n: int, dropout: float = DEFAULT_DROPOUT, failure: float = DEFAULT_FAILURE) -> int:
    """The smallest even K whose round fails with probability <= failure when each client drops with `dropout`.

    A round fails when some survivor keeps fewer than T = K/2 + 1 live neighbours; by the union bound that is at
    most N * P(Binomial(K, 1 - dropout) < T), and the Chernoff bound makes the K that meets it grow as log N
    (at the defaults N=10: complete graph; N=50: 32; N=200: 34; N=10^4: 42; N=10^6: 52). K >= N - 1 means every client
    neighbours every other (Bonawitz et al.'s complete graph).
    """
    if n < 2:
        raise SecAggError(f"secure aggregation needs at least 2 clients, got {n}")
    if not 0 <= dropout < 0.5:
        raise SecAggError(f"dropout rate {dropout} must be in [0, 0.5): with T = K/2 + 1 half the neighbours must live")
    k = 2
    while k < n - 1:
        t = default_threshold(k)
        if n * _binomial_cdf(t - 1, k, 1 - dropout) <= failure:
            return k
        k += 2
    return n - 1


def _permutation(seed: bytes, n: int) -> list[int]:
    """Indices 1..n ordered by HMAC-SHA256(seed, index): a uniformly random order fixed by the seed."""
    return sorted(range(1, n + 1), key=lambda i: hmac.new(seed, b"fedstream-secagg-graph" + i.to_bytes(8, "big"), hashlib.sha256).digest())


def harary_graph(seed: bytes, n: int, k: int) -> NeighbourGraph:
    """H(k, n) over the seed's permutation: position p neighbours positions p±1..p±k/2 (mod n)."""
    if len(seed) < 16:
        raise SecAggError(f"graph seed has {len(seed)} bytes; expected at least 16 so the server cannot enumerate graphs")
    if n < 2:
        raise SecAggError(f"secure aggregation needs at least 2 clients, got {n}")
    if k < 2 or (k < n - 1 and k % 2):
        raise SecAggError(f"neighbour count K={k} must be even and >= 2 (or >= N-1 = {n - 1} for the complete graph)")
    order = _permutation(seed, n)
    if k >= n - 1:
        everyone = frozenset(order)
        return NeighbourGraph(n, n - 1, {i: everyone - {i} for i in order})
    half = k // 2
    neighbours = {}
    for p, i in enumerate(order):
        neighbours[i] = frozenset(order[(p + d) % n] for d in range(-half, half + 1) if d)
    return NeighbourGraph(n, k, neighbours)
