"""N secure-aggregation clients and one server in one process, with dropouts at chosen phases."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from fedstream.common.secagg.client_protocol import SecAggClient
from fedstream.common.secagg.encoding import decode_weight, decode_window
from fedstream.common.secagg.params import RoundParams
from fedstream.common.secagg.server_protocol import SecAggServer


@dataclass
class SimResult:
    server: SecAggServer
    clients: dict[int, SecAggClient]
    ring_sum: np.ndarray
    decoded: np.ndarray
    total_weight: int
    survivors: list[int]
    windows_seen: dict[int, list[bytes]] = field(default_factory=dict)


def make_updates(n: int, size: int, seed: int = 0) -> tuple[dict[int, np.ndarray], dict[int, int]]:
    rng = np.random.default_rng(seed)
    updates = {i: rng.normal(0, 0.05, size).astype(np.float32) for i in range(1, n + 1)}
    weights = {i: int(rng.integers(1, 500)) for i in range(1, n + 1)}
    return updates, weights


def run_round(
    params: RoundParams,
    updates: dict[int, np.ndarray],
    weights: dict[int, int],
    min_clients: int = 2,
    drop_after: dict[int, str] | None = None,
    keep_windows: bool = False,
    inject: Callable[[str, SecAggServer], None] | None = None,
) -> SimResult:
    """One full round; drop_after maps a client to the phase after which it vanishes ("advertise", "share",
    "receive", "masked"); inject(phase, server) is called after the honest messages of each
    phase, before the server closes it, to send hostile ones."""
    drop_after = drop_after or {}
    hostile = inject or (lambda phase, server: None)
    server = SecAggServer(params, min_clients)
    clients = {i: SecAggClient(server.setup_for(i), np.random.default_rng(1000 + i)) for i in range(1, params.clients + 1)}
    live = set(clients)

    def vanish(stage: str) -> None:
        for i, when in drop_after.items():
            if when == stage and i in live:
                live.discard(i)
                server.drop(i)

    for i in sorted(live):
        server.receive_keys(clients[i].advertise_keys())
    hostile("advertise", server)
    vanish("advertise")
    for i, message in server.close_advertise().items():
        if i in live:
            server.receive_shares(clients[i].share_keys(message))
    hostile("share", server)
    vanish("share")
    forwarded = server.close_share_keys()
    for i, message in forwarded.items():
        if i in live:
            clients[i].receive_shares(message)
    vanish("receive")
    seen: dict[int, list[bytes]] = {}
    for i in sorted(forwarded):
        if i in live:
            for window in clients[i].masked_input(updates[i], weights[i]):
                server.receive_masked_window(window)
                if keep_windows:
                    seen.setdefault(i, []).append(window.words)
            server.finish_masked_input(i)
    hostile("masked", server)
    vanish("masked")
    for i, request in server.close_masked_input().items():
        if i in live:
            server.receive_unmask(clients[i].unmask(request))
    hostile("unmask", server)
    ring_sum = server.finish()
    encoding = params.encoding
    decoded = decode_window(ring_sum[:-1], encoding)
    return SimResult(server, clients, ring_sum, decoded, decode_weight(ring_sum), server.survivors, seen)


def plain_weighted_sum(updates: dict[int, np.ndarray], weights: dict[int, int], members: list[int], clip: float) -> np.ndarray:
    return sum(weights[i] * np.clip(updates[i].astype(np.float64), -clip, clip) for i in members)
