"""Hostile messages in every phase (hypothesis): refused with SecAggError, the sum bit-identical to a clean round."""

import functools

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedstream.common.secagg.client_protocol import SecAggClient
from fedstream.common.secagg.errors import SecAggAbort, SecAggError
from fedstream.common.secagg.messages import (
    AdvertiseKeys,
    EncryptedShare,
    ForwardedShares,
    MaskedWindow,
    NeighbourKeys,
    RevealedShare,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
)
from fedstream.common.secagg.params import RoundParams
from fedstream.common.secagg.server_protocol import SecAggServer
from tests.secagg_sim import make_updates, run_round

N, SIZE, ROUND = 6, 300, 42
PARAMS = RoundParams.create(round_id=ROUND, clients=N, model_numel=SIZE, clip=0.1, bits=16, weight_bound=1000, window=128)
UPDATES, WEIGHTS = make_updates(N, SIZE)

round_ids = st.one_of(st.just(ROUND), st.integers(0, 2**64 - 1))
indices = st.one_of(st.integers(1, N), st.integers(-3, 2**40))
blobs = st.one_of(st.binary(max_size=200), st.sampled_from([bytes(32), bytes(66), b"\xff" * 66, bytes(160), bytes(512)]))
boxes = st.builds(EncryptedShare, indices, indices, blobs)
revealed = st.builds(RevealedShare, indices, blobs)
hostile = {
    "advertise": st.builds(AdvertiseKeys, round_ids, indices, blobs, blobs),
    "share": st.builds(ShareKeys, round_ids, indices, st.lists(boxes, max_size=7)),
    "masked": st.one_of(st.builds(MaskedWindow, round_ids, indices, st.integers(-1, 400), blobs), indices),
    "unmask": st.builds(UnmaskResponse, round_ids, indices, st.lists(revealed, max_size=6), st.lists(revealed, max_size=3)),
}


@functools.lru_cache(maxsize=None)
def _clean_sum() -> bytes:
    return run_round(PARAMS, UPDATES, WEIGHTS, drop_after={2: "masked"}).ring_sum.tobytes()


def _deliver(server: SecAggServer, message: object) -> None:
    if isinstance(message, AdvertiseKeys):
        server.receive_keys(message)
    elif isinstance(message, ShareKeys):
        server.receive_shares(message)
    elif isinstance(message, MaskedWindow):
        server.receive_masked_window(message)
    elif isinstance(message, UnmaskResponse):
        server.receive_unmask(message)
    else:
        server.finish_masked_input(message)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), phase=st.sampled_from(sorted(hostile)))
def test_server_refuses_hostile_messages_and_the_sum_is_untouched(data: st.DataObject, phase: str) -> None:
    messages = data.draw(st.lists(hostile[phase], min_size=1, max_size=5))

    def inject(now: str, server: SecAggServer) -> None:
        if now == phase:
            for message in messages:
                try:
                    _deliver(server, message)
                except SecAggError:
                    pass

    result = run_round(PARAMS, UPDATES, WEIGHTS, drop_after={2: "masked"}, inject=inject)
    assert result.ring_sum.tobytes() == _clean_sum()


def _client_at(stage: str) -> tuple[SecAggClient, object]:
    """Client 1 waiting for the given message, and the honest message it would get."""
    server = SecAggServer(PARAMS, 2)
    clients = {i: SecAggClient(server.setup_for(i)) for i in range(1, N + 1)}
    for c in clients.values():
        server.receive_keys(c.advertise_keys())
    keys = server.close_advertise()
    if stage == "keys":
        return clients[1], keys[1]
    for i, m in keys.items():
        server.receive_shares(clients[i].share_keys(m))
    forwarded = server.close_share_keys()
    if stage == "shares":
        return clients[1], forwarded[1]
    clients[1].receive_shares(forwarded[1])
    list(clients[1].masked_input(np.zeros(SIZE), 1))
    return clients[1], None


client_hostile = {
    "keys": st.builds(NeighbourKeys, round_ids, indices, st.lists(hostile["advertise"], max_size=6)),
    "shares": st.builds(ForwardedShares, round_ids, indices, st.lists(boxes, max_size=6)),
    "unmask": st.builds(UnmaskRequest, round_ids, indices, st.lists(indices, max_size=6), st.lists(indices, max_size=6)),
}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), stage=st.sampled_from(sorted(client_hostile)))
def test_client_aborts_cleanly_on_hostile_server_messages(data: st.DataObject, stage: str) -> None:
    client, _ = _client_at(stage)
    message = data.draw(client_hostile[stage])
    method = {"keys": client.share_keys, "shares": client.receive_shares, "unmask": client.unmask}[stage]
    try:
        method(message)
    except SecAggAbort:
        return
    assert isinstance(message, UnmaskRequest)  # only a request that happens to be valid may be answered
    assert not set(message.survived) & set(message.dropped)
