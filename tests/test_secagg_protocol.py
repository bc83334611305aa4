import dataclasses

import numpy as np
import pytest
from scipy.stats import chisquare

from fedstream.common.secagg.client_protocol import ClientPhase, SecAggClient
from fedstream.common.secagg.encoding import decode_window
from fedstream.common.secagg.errors import RoundFailed, SecAggAbort, SecAggError
from fedstream.common.secagg.messages import AdvertiseKeys, EncryptedShare, ForwardedShares, MaskedWindow, UnmaskRequest
from fedstream.common.secagg.params import RoundParams
from fedstream.common.secagg.server_protocol import SecAggServer
from tests.secagg_sim import make_updates, plain_weighted_sum, run_round

SIZE = 3000
CLIP = 0.1


def _params(n: int = 12, k: int | None = 6, window: int = 512, **kw) -> RoundParams:
    return RoundParams.create(round_id=42, clients=n, model_numel=SIZE, clip=CLIP, bits=16, weight_bound=1000, neighbours=k, window=window, **kw)


@pytest.mark.parametrize(
    "k,drop_after",
    [
        (6, {}),
        (6, {3: "share", 7: "masked"}),  # the case: one after key sharing, one after masked upload
        (10, {1: "advertise", 4: "share", 9: "receive", 12: "masked"}),  # K=10, T=6: 4 of 10 neighbours may go
    ],
)
def test_unmasked_sum_equals_the_survivors_weighted_sum(k: int, drop_after: dict[int, str]) -> None:
    params = _params(k=k)
    updates, weights = make_updates(params.clients, SIZE)
    result = run_round(params, updates, weights, drop_after=drop_after)
    lost = {i for i, when in drop_after.items() if when != "masked"}
    assert result.survivors == sorted(set(range(1, params.clients + 1)) - lost)
    exact = plain_weighted_sum(updates, weights, result.survivors, CLIP)
    assert np.abs(result.decoded - exact).max() < params.encoding.error_bound(len(result.survivors))
    assert result.total_weight == sum(weights[i] for i in result.survivors)
    assert set(result.server.dropped) == lost


def test_complete_graph_default_and_64_bit_ring() -> None:
    params = RoundParams.create(round_id=1, clients=5, model_numel=SIZE, clip=CLIP, bits=30, weight_bound=1000, window=700)
    assert params.neighbours == 4 and params.threshold == 3 and params.ring_bits == 64
    updates, weights = make_updates(5, SIZE, seed=3)
    result = run_round(params, updates, weights, drop_after={2: "masked"})
    exact = plain_weighted_sum(updates, weights, result.survivors, CLIP)
    assert np.abs(result.decoded - exact).max() < params.encoding.error_bound(5)


def test_masked_upload_bytes_are_indistinguishable_from_uniform() -> None:
    params = _params(window=1 << 14, n=6, k=None)
    params = dataclasses.replace(params, vector_length=1 << 16)
    updates = {i: np.zeros(params.vector_length - 1, np.float32) for i in range(1, 7)}
    updates[1][:] = 0.05  # a highly structured input
    result = run_round(params, updates, {i: 1 for i in range(1, 7)}, keep_windows=True)
    masked = np.frombuffer(b"".join(result.windows_seen[1]), np.uint8)
    assert chisquare(np.bincount(masked, minlength=256)).pvalue > 1e-4
    plain = np.round(updates[1] * 1 / params.encoding.step).astype(np.int64).astype(np.uint32).view(np.uint8)
    assert chisquare(np.bincount(plain, minlength=256)).pvalue < 1e-10  # the test can tell structure apart


def _client_ready_to_unmask() -> tuple[SecAggClient, dict[int, SecAggClient], SecAggServer]:
    params = _params(n=6, k=None)
    server = SecAggServer(params, 2)
    clients = {i: SecAggClient(server.setup_for(i)) for i in range(1, 7)}
    for c in clients.values():
        server.receive_keys(c.advertise_keys())
    for i, m in server.close_advertise().items():
        server.receive_shares(clients[i].share_keys(m))
    for i, m in server.close_share_keys().items():
        clients[i].receive_shares(m)
    zeros = np.zeros(SIZE, np.float32)
    for i, c in clients.items():
        for w in c.masked_input(zeros, 1):
            server.receive_masked_window(w)
        server.finish_masked_input(i)
    return clients[1], clients, server


def test_client_refuses_to_reveal_both_shares_of_one_neighbour() -> None:
    client, _, _ = _client_ready_to_unmask()
    with pytest.raises(SecAggAbort, match=r"both shares of client\(s\) \[3\]"):
        client.unmask(UnmaskRequest(42, 1, [2, 3, 4, 5], [3]))
    assert client.phase is ClientPhase.ABORTED
    with pytest.raises(SecAggAbort):
        client.unmask(UnmaskRequest(42, 1, [2, 4, 5], [3]))


def test_client_answers_one_unmask_request_only() -> None:
    client, _, _ = _client_ready_to_unmask()
    first = client.unmask(UnmaskRequest(42, 1, [2, 3, 4, 5], [6]))
    assert [s.owner for s in first.self_mask_shares] == [2, 3, 4, 5] and [s.owner for s in first.mask_key_shares] == [6]
    with pytest.raises(SecAggAbort, match="phase done"):
        client.unmask(UnmaskRequest(42, 1, [2, 4, 5], [3, 6]))


@pytest.mark.parametrize(
    "request_",
    [
        UnmaskRequest(41, 1, [2, 3, 4], []),  # wrong round
        UnmaskRequest(42, 2, [2, 3, 4], []),  # someone else's request
        UnmaskRequest(42, 1, [2, 3], [4, 5, 6]),  # fewer than T survivors
        UnmaskRequest(42, 1, [2, 3, 4, 7], []),  # a share this client does not hold
        UnmaskRequest(42, 1, [2, 2, 3, 4], []),
    ],
)
def test_client_aborts_on_a_bad_unmask_request(request_: UnmaskRequest) -> None:
    client, _, _ = _client_ready_to_unmask()
    with pytest.raises(SecAggAbort):
        client.unmask(request_)


def _forwarded_for(index: int) -> tuple[SecAggClient, ForwardedShares]:
    params = _params(n=5, k=None)
    server = SecAggServer(params, 2)
    clients = {i: SecAggClient(server.setup_for(i)) for i in range(1, 6)}
    for c in clients.values():
        server.receive_keys(c.advertise_keys())
    for i, m in server.close_advertise().items():
        server.receive_shares(clients[i].share_keys(m))
    return clients[index], server.close_share_keys()[index]


def test_share_box_relabelled_or_tampered_or_from_another_round_fails_authentication() -> None:
    client, forwarded = _forwarded_for(1)
    a, b = forwarded.shares[0], forwarded.shares[1]
    swapped = [EncryptedShare(a.sender, 1, b.box), EncryptedShare(b.sender, 1, a.box)] + forwarded.shares[2:]
    with pytest.raises(SecAggAbort, match="fails AES-GCM"):
        client.receive_shares(dataclasses.replace(forwarded, shares=swapped))
    client, forwarded = _forwarded_for(1)
    with pytest.raises(SecAggAbort, match="is for round 41"):
        client.receive_shares(dataclasses.replace(forwarded, round_id=41))
    other_round_client, other_round = _forwarded_for(1)
    client, forwarded = _forwarded_for(1)
    with pytest.raises(SecAggAbort, match="fails AES-GCM"):
        client.receive_shares(dataclasses.replace(forwarded, shares=other_round.shares))


def test_client_aborts_with_fewer_than_t_live_neighbours() -> None:
    client, forwarded = _forwarded_for(1)
    with pytest.raises(SecAggAbort, match="only 2 live neighbours"):
        client.receive_shares(dataclasses.replace(forwarded, shares=forwarded.shares[:2]))


def test_public_key_sent_twice_or_copied_from_another_client_is_refused_and_the_round_completes() -> None:
    params = _params()
    updates, weights = make_updates(params.clients, SIZE)

    def replay(phase: str, server: SecAggServer) -> None:
        if phase == "advertise":
            with pytest.raises(SecAggError, match="client 2 sent its public keys twice"):
                server.receive_keys(server._keys[2])
            fresh = SecAggServer(params, 2)
            fresh.receive_keys(server._keys[2])
            with pytest.raises(SecAggError, match="client 3 sent a public key another client already advertised"):
                fresh.receive_keys(AdvertiseKeys(42, 3, server._keys[2].encryption_public, server._keys[3].masking_public))

    result = run_round(params, updates, weights, inject=replay)
    assert result.survivors == list(range(1, params.clients + 1))
    exact = plain_weighted_sum(updates, weights, result.survivors, CLIP)
    assert np.abs(result.decoded - exact).max() < params.encoding.error_bound(len(result.survivors))


def test_wrong_length_or_broken_upload_is_discarded_without_corrupting_the_sum() -> None:
    params = _params(k=10)  # T = 6: three lost uploads leave every survivor 7 live neighbours
    updates, weights = make_updates(params.clients, SIZE)
    server = SecAggServer(params, 2)
    clients = {i: SecAggClient(server.setup_for(i), np.random.default_rng(i)) for i in range(1, params.clients + 1)}
    for c in clients.values():
        server.receive_keys(c.advertise_keys())
    for i, m in server.close_advertise().items():
        server.receive_shares(clients[i].share_keys(m))
    for i, m in server.close_share_keys().items():
        clients[i].receive_shares(m)
    for i, c in clients.items():
        windows = list(c.masked_input(updates[i], weights[i]))
        if i == 4:  # a window one word short, halfway through
            for w in windows[:2]:
                server.receive_masked_window(w)
            with pytest.raises(SecAggError, match="expected 2048 bytes at word 1024"):
                server.receive_masked_window(dataclasses.replace(windows[2], words=windows[2].words[:-4]))
            continue
        if i == 8:  # the stream breaks after three windows
            for w in windows[:3]:
                server.receive_masked_window(w)
            server.drop(8)
            continue
        if i == 10:  # the stream ends early
            server.receive_masked_window(windows[0])
            with pytest.raises(SecAggError, match="after 512 of 3001 words"):
                server.finish_masked_input(10)
            continue
        for w in windows:
            server.receive_masked_window(w)
        server.finish_masked_input(i)
    with pytest.raises(SecAggError, match="dropped in phase masked input"):
        server.receive_masked_window(MaskedWindow(42, 4, 0, bytes(2048)))
    for i, request in server.close_masked_input().items():
        assert set(request.dropped) <= {4, 8, 10}
        server.receive_unmask(clients[i].unmask(request))
    survivors = sorted(set(clients) - {4, 8, 10})
    assert server.survivors == survivors
    ring_sum = server.finish()
    exact = plain_weighted_sum(updates, weights, survivors, CLIP)
    assert np.abs(decode_window(ring_sum[:-1], params.encoding) - exact).max() < params.encoding.error_bound(len(survivors))


def test_too_many_dropouts_fail_the_round_naming_phase_and_clients() -> None:
    params = _params(n=8, k=None)  # K = 7, T = 4
    updates, weights = make_updates(8, SIZE)
    with pytest.raises(RoundFailed, match="phase share keys: only 5 clients left; --min-clients is 6") as failed:
        run_round(params, updates, weights, min_clients=6, drop_after={1: "share", 2: "share", 3: "share"})
    assert failed.value.clients == [1, 2, 3]


@pytest.mark.parametrize(
    "second,message",
    [("receive", "phase masked input: these survivors have fewer than T=3 live neighbours"), ("masked", "phase unmasking: fewer than T=3 unmasking shares")],
)
def test_survivor_with_fewer_than_t_live_neighbours_fails_the_round(second: str, message: str) -> None:
    params = _params(n=12, k=4)  # T = 3
    updates, weights = make_updates(12, SIZE)
    victim = 5
    graph_neighbours = sorted(SecAggServer(params, 2).graph.of(victim))
    with pytest.raises(RoundFailed, match=message) as failed:
        run_round(params, updates, weights, drop_after={graph_neighbours[0]: "receive", graph_neighbours[1]: second})
    assert victim in failed.value.clients


def test_unsafe_parameters_are_refused_by_the_client() -> None:
    params = _params(n=12, k=6)
    server = SecAggServer(params, 2)
    for bad in [dict(threshold=3), dict(threshold=7), dict(neighbours=5), dict(graph_seed=b"x"), dict(ring_bits=32, bits=40)]:
        setup = dataclasses.replace(server.setup_for(1), params=dataclasses.replace(params, **bad))
        with pytest.raises(SecAggAbort, match="round setup refused"):
            SecAggClient(setup)
