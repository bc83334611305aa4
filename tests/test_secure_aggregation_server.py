"""Secure aggregation as a round mode, in process: a real gRPC server thread and scripted clients that speak the
protocol through the client's own phase dispatcher, with deltas the test chooses (so the expected sum is exact).

What it checks: the published model is the FedAvg of exactly the uploaded deltas within the stated quantisation
bound; a spooled masked upload is indistinguishable from uniform bytes (and a plain one is not); no public key,
share box or revealed share reaches the log or the metrics; hostile Exchange messages in every phase are refused
with a clear status while the round still completes with the honest sum; clients without the capability are
refused at Join; the dispatcher refuses to reveal both shares of one neighbour.
"""

from __future__ import annotations

import base64
import logging
import math
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from fedstream.client.secure_aggregation import CAPABILITY, SecureAggregationClient
from fedstream.client.transfer import upload
from fedstream.common.proto import coordinator_pb2 as pb
from fedstream.common.proto import secagg_pb2
from fedstream.common.secagg import wire
from fedstream.common.secagg.errors import SecAggAbort, SecAggError
from fedstream.common.secagg.keys import RoundKeys
from fedstream.common.secagg.messages import MaskedWindow
from fedstream.common.secagg.messages import UnmaskRequest
from fedstream.common.secagg.params import RoundParams
from fedstream.common.secagg.server_protocol import SecAggServer
from fedstream.common.tasks import load_task
from fedstream.common.wire.protocol import PROTOCOL_VERSION
from fedstream.server.aggregation.strategies import make_strategy
from fedstream.server.core.config import ServerConfig
from fedstream.server.core.coordinator import Coordinator
from fedstream.server.modes import SecAggSettings, SecureAggregation
from fedstream.server.transport.server import ServerThread
from tests.inprocess import CHUNK_BYTES, TASK_OPTIONS, Federation, random_delta

CLIP = 0.5
BITS = 20
REFUSED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ALREADY_EXISTS,
           grpc.StatusCode.PERMISSION_DENIED}


def start(run_dir: Path, **config: object) -> Federation:
    task = load_task("digits", TASK_OPTIONS)
    settings = {"rounds": 1, "min_clients": 3, "round_timeout": 60.0, "wait_for_clients": 60.0, **config}
    mode = SecureAggregation(SecAggSettings(clip=CLIP, bits=BITS))
    coordinator = Coordinator(task, make_strategy("fedavg"), ServerConfig(run_dir=run_dir, chunk_bytes=CHUNK_BYTES,
                                                                          **settings), mode)
    server = ServerThread(coordinator)
    thread = threading.Thread(target=coordinator.run, name="round-loop", daemon=True)
    thread.start()
    initial = OrderedDict((k, v.clone()) for k, v in coordinator.global_state.items())
    return Federation(coordinator, server, server.port, thread, initial=initial)


class ScriptedClient(threading.Thread):
    """Answers EXCHANGE tasks with the real dispatcher and uploads the masked `delta`; before answering a phase it
    may first send hostile payloads for it and records the status each got."""

    def __init__(self, federation: Federation, client_id: str, delta: dict[str, torch.Tensor], examples: int,
                 hostile: dict[str, list] | None = None) -> None:
        super().__init__(name=client_id, daemon=True)
        self.member = federation.member(client_id)
        self.member.num_examples = examples
        self.delta = delta
        self.examples = examples
        self.hostile = hostile or {}
        self.refusals: list[tuple[str, grpc.StatusCode]] = []
        self.sent: dict[str, bytes] = {}
        self.error: BaseException | None = None
        self.dispatcher = SecureAggregationClient()
        self.member.session = self.member.stub.Join(pb.JoinRequest(
            client_id=client_id, protocol_version=PROTOCOL_VERSION, device="cpu", codecs=["raw"],
            num_examples=examples, capabilities=[CAPABILITY]), timeout=10)

    def exchange(self, task: pb.Task, phase: str, payload: bytes) -> None:
        self.member.stub.Exchange(pb.ExchangeRequest(session_id=self.member.session_id, round=task.round,
                                                     phase=phase, payload=payload), timeout=10)

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # reported by the test
            self.error = exc

    def _run(self) -> None:
        while True:
            task = self.member.stub.GetTask(pb.TaskRequest(session_id=self.member.session_id, wait_ms=2000),
                                            timeout=10)
            if task.kind == pb.Task.FINISH:
                return
            if task.kind != pb.Task.EXCHANGE:
                continue
            for make in self.hostile.get(task.phase, []):
                phase, payload = make(self, task)
                try:
                    self.exchange(task, phase, payload)
                    self.refusals.append((phase, grpc.StatusCode.OK))
                except grpc.RpcError as exc:
                    self.refusals.append((phase, exc.code()))
            if task.phase == wire.MASKED_INPUT:
                self.dispatcher.receive_shares(task.payload)
                manifest, windows = self.dispatcher.masked_upload(self.delta, self.examples)
                upload(self.member.stub, self.member.session_id, task.round, task.version, self.delta, self.examples,
                       {}, "raw", CHUNK_BYTES, encoded=(manifest, windows), timeout=30)
            else:
                answer = self.dispatcher.answer(task.phase, task.payload)
                self.sent[task.phase] = answer
                self.exchange(task, task.phase, answer)


def run_round(tmp_path: Path, hostile: dict[str, list] | None = None, spy=None):
    fed = start(tmp_path / "run")
    try:
        if spy is not None:
            spy(fed.coordinator.mode)
        clients = [ScriptedClient(fed, f"c{i}", random_delta(fed.initial, seed=i, scale=0.05), 100 + 37 * i,
                                  hostile if i == 0 else None) for i in range(3)]
        for c in clients:
            c.start()
        fed.wait_completed(1, timeout=60)
        for c in clients:
            c.join(timeout=20)
            assert c.error is None, repr(c.error)
        final = OrderedDict((k, v.clone()) for k, v in fed.coordinator.global_state.items())
        records = fed.coordinator.runlog.records()
        return fed, clients, final, records
    finally:
        fed.close()


def expected_model(fed: Federation, clients: list[ScriptedClient]) -> dict[str, torch.Tensor]:
    total = sum(c.examples for c in clients)
    return {k: v.double() + sum(c.examples * c.delta[k].double().clamp(-CLIP, CLIP) for c in clients) / total
            for k, v in fed.initial.items()}


def check_equals_fedavg(fed: Federation, clients: list[ScriptedClient], final: dict[str, torch.Tensor]) -> None:
    step = CLIP * max(c.examples for c in clients) / (2 ** (BITS - 1) - 1)
    bound = len(clients) * step / sum(c.examples for c in clients)  # the documented bound on the mean
    for name, tensor in expected_model(fed, clients).items():
        error = (final[name].double() - tensor).abs().max().item()
        assert error <= bound + 1e-6, (name, error, bound)  # + float32 rounding of the published model


def test_round_publishes_the_fedavg_of_exactly_the_uploaded_deltas(tmp_path: Path) -> None:
    fed, clients, final, records = run_round(tmp_path)
    check_equals_fedavg(fed, clients, final)
    (record,) = records
    assert record["mode"] == "secure-aggregation" and record["clients"] == 3 and record["dropped"] == {}
    assert record["bytes_up"] == 3 * (sum(t.numel() for t in fed.initial.values()) + 1) * 4
    assert record["train_loss"] is None  # clients send no per-client metrics under secure aggregation


def chi_squared_uniform(data: bytes) -> float:
    """Pearson's statistic of the byte histogram against uniform (255 degrees of freedom: mean 255, sd 22.6)."""
    counts = np.bincount(np.frombuffer(data, dtype=np.uint8), minlength=256)
    expected = len(data) / 256
    return float(((counts - expected) ** 2 / expected).sum())


def test_spooled_masked_upload_is_uniform_and_no_key_or_share_is_logged(tmp_path: Path, caplog) -> None:
    spooled: list[bytes] = []
    payloads: list[bytes] = []

    def spy(mode: SecureAggregation) -> None:
        accept, exchange = mode.accept, mode.exchange

        def copying_accept(sink, update):
            spooled.append(Path(update.path).read_bytes()[: sink.writer.total_bytes])
            return accept(sink, update)

        def recording_exchange(client_id, round_number, phase, payload):
            payloads.append(bytes(payload))
            return exchange(client_id, round_number, phase, payload)

        mode.accept, mode.exchange = copying_accept, recording_exchange

    caplog.set_level(logging.DEBUG)
    fed, clients, final, records = run_round(tmp_path, spy=spy)
    check_equals_fedavg(fed, clients, final)
    assert len(spooled) == 3
    critical = 255 + 6 * math.sqrt(2 * 255)  # six standard deviations: a uniform source fails once in ~10^9
    for data in spooled:
        assert chi_squared_uniform(data) < critical
    plain = b"".join(t.numpy().tobytes() for t in clients[0].delta.values())
    assert chi_squared_uniform(plain) > 10 * critical  # the same test tells an unmasked update apart
    secrets: list[bytes] = []
    for payload in payloads:
        for kind in (secagg_pb2.SecAggPublicKeys, secagg_pb2.SecAggShareKeys, secagg_pb2.SecAggUnmaskResponse):
            try:
                message = kind.FromString(payload)
            except Exception:
                continue
            secrets += [getattr(message, f, b"") for f in ("encryption_public", "masking_public")]
            secrets += [s.box for s in getattr(message, "shares", [])]
            secrets += [s.share for s in [*getattr(message, "self_mask_shares", []),
                                          *getattr(message, "mask_key_shares", [])]]
    secrets = [s for s in secrets if len(s) >= 16]
    assert len(secrets) >= 3 * 2 + 3 * 2 + 3 * 2  # keys, boxes and shares of three clients were seen
    logged = caplog.text + (tmp_path / "run" / "metrics.jsonl").read_text()
    for secret in secrets:
        for form in (secret.hex(), base64.b64encode(secret).decode(), repr(secret)[2:-1]):
            assert form[:24] not in logged


def _random(seed: int):
    def make(client: ScriptedClient, task: pb.Task):
        return task.phase, os.urandom(1 + seed * 97 % 400)
    return make


def _as_other_client(client: ScriptedClient, task: pb.Task):
    """A well-formed message of the phase that claims another client's number (keys: fresh valid ones)."""
    own = wire.parse_setup(task.payload).index if task.phase == wire.ADVERTISE else client.dispatcher.protocol.index
    other = 1 if own != 1 else 2
    if task.phase == wire.ADVERTISE:
        keys = RoundKeys.generate()
        message = secagg_pb2.SecAggPublicKeys(round_id=wire.parse_setup(task.payload).params.round_id, sender=other,
                                              encryption_public=keys.encryption_public,
                                              masking_public=keys.masking_public)
    elif task.phase == wire.SHARE_KEYS:
        message = secagg_pb2.SecAggShareKeys(round_id=client.dispatcher.protocol.params.round_id, sender=other)
    else:
        message = secagg_pb2.SecAggUnmaskResponse(round_id=client.dispatcher.protocol.params.round_id, sender=other)
    return task.phase, message.SerializeToString()


def _wrong_phase(client: ScriptedClient, task: pb.Task):
    other = wire.UNMASKING if task.phase != wire.UNMASKING else wire.ADVERTISE
    return other, b""


def _masked_phase_name(client: ScriptedClient, task: pb.Task):
    return wire.MASKED_INPUT, b"\x00" * 64


def _oversized_lists(client: ScriptedClient, task: pb.Task):
    message = secagg_pb2.SecAggShareKeys(round_id=0, sender=1,
                                         shares=[secagg_pb2.SecAggShareBox(sender=1, receiver=2, box=b"x")] * 70_000)
    return task.phase, message.SerializeToString()


def _wrong_round_id(client: ScriptedClient, task: pb.Task):
    kinds = {wire.ADVERTISE: secagg_pb2.SecAggPublicKeys, wire.SHARE_KEYS: secagg_pb2.SecAggShareKeys,
             wire.UNMASKING: secagg_pb2.SecAggUnmaskResponse}
    message = kinds[task.phase](round_id=12345, sender=client.dispatcher.protocol.index
                                if client.dispatcher.protocol else 1)
    return task.phase, message.SerializeToString()


HOSTILE = [_random(1), _random(2), _random(3), _as_other_client, _wrong_phase, _masked_phase_name, _oversized_lists]


@pytest.mark.parametrize("phase", [wire.ADVERTISE, wire.SHARE_KEYS, wire.UNMASKING])
def test_hostile_exchange_messages_are_refused_and_the_round_still_sums_the_honest_updates(tmp_path: Path,
                                                                                          phase: str) -> None:
    makers = HOSTILE + ([_wrong_round_id] if phase != wire.ADVERTISE else [])
    fed, clients, final, records = run_round(tmp_path, hostile={phase: makers})
    statuses = clients[0].refusals
    assert len(statuses) == len(makers)
    assert all(code in REFUSED for _, code in statuses), statuses
    check_equals_fedavg(fed, clients, final)
    assert records[0]["clients"] == 3 and records[0]["attempt"] == 1


def test_a_client_without_the_capability_is_refused_at_join(tmp_path: Path) -> None:
    fed = start(tmp_path / "run")
    try:
        with pytest.raises(grpc.RpcError) as refused:
            fed.join("old-client")
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "secure aggregation" in refused.value.details() and "'secagg'" in refused.value.details()
    finally:
        fed.close()


def test_the_masked_upload_must_have_the_rounds_length_and_ring_dtype(tmp_path: Path) -> None:
    fed = start(tmp_path / "run", round_timeout=5.0)
    try:
        clients = [ScriptedClient(fed, f"c{i}", random_delta(fed.initial, seed=i), 100) for i in range(3)]
        bad = clients[0]
        for c in clients[1:]:
            c.start()
        deadline = time.monotonic() + 30
        while True:
            task = bad.member.stub.GetTask(pb.TaskRequest(session_id=bad.member.session_id, wait_ms=1000), timeout=10)
            if task.kind == pb.Task.EXCHANGE and task.phase == wire.MASKED_INPUT:
                break
            if task.kind == pb.Task.EXCHANGE:
                bad.exchange(task, task.phase, bad.dispatcher.answer(task.phase, task.payload))
            assert time.monotonic() < deadline
        numel = sum(t.numel() for t in fed.initial.values())
        for dtype, length in (("int32", numel), ("float32", numel + 1), ("int64", numel + 1)):
            manifest = pb.Manifest(tensors=[pb.TensorSpec(name="secagg.masked", dtype=dtype, shape=[length],
                                                          codec="raw", byte_length=length * 4 * (dtype == "int64" and 2 or 1))],
                                   total_bytes=length * 4 * (dtype == "int64" and 2 or 1))
            with pytest.raises(grpc.RpcError) as refused:
                upload(bad.member.stub, bad.member.session_id, task.round, task.version, {}, 100, {}, "raw",
                       CHUNK_BYTES, encoded=(manifest, [bytes(manifest.total_bytes)]), timeout=10)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
        assert fed.coordinator.version == 0
    finally:
        fed.close()


# ----- the client's dispatcher, without a network ----------------------------------------------------------------


def _in_memory_round(n: int = 4):
    params = RoundParams.create(round_id=7, clients=n, model_numel=10, clip=1.0, bits=16, weight_bound=10)
    server = SecAggServer(params, min_clients=2)
    clients = {i: SecureAggregationClient() for i in range(1, n + 1)}
    for i, c in clients.items():
        server.receive_keys(wire.parse_public_keys(c.answer(wire.ADVERTISE, wire.setup_bytes(server.setup_for(i)))))
    for i, message in server.close_advertise().items():
        server.receive_shares(wire.parse_share_keys(clients[i].answer(wire.SHARE_KEYS,
                                                                      wire.neighbour_keys_bytes(message))))
    for i, message in server.close_share_keys().items():
        clients[i].receive_shares(wire.forwarded_shares_bytes(message))
        delta = {"w": torch.full((10,), 0.1 * i)}
        manifest, windows = clients[i].masked_upload(delta, weight=i)
        assert manifest.total_bytes == 11 * 4
        offset = 0
        for words in windows:
            server.receive_masked_window(MaskedWindow(7, i, offset, words))
            offset += len(words) // 4
        server.finish_masked_input(i)
    return server, clients


def test_dispatcher_refuses_to_reveal_both_shares_of_one_neighbour() -> None:
    server, clients = _in_memory_round()
    requests = server.close_masked_input()
    request = requests[1]
    neighbour = request.survived[0]
    both = UnmaskRequest(request.round_id, 1, request.survived, [neighbour])
    with pytest.raises(SecAggAbort, match="both shares"):
        clients[1].answer(wire.UNMASKING, wire.unmask_request_bytes(both))
    with pytest.raises(SecAggAbort):  # and it stays out of the round: no later request is answered
        clients[1].answer(wire.UNMASKING, wire.unmask_request_bytes(request))


def test_dispatcher_answers_a_repeated_task_with_the_same_message_and_refuses_unknown_phases() -> None:
    server, clients = _in_memory_round()
    requests = server.close_masked_input()
    first = clients[2].answer(wire.UNMASKING, wire.unmask_request_bytes(requests[2]))
    assert clients[2].answer(wire.UNMASKING, wire.unmask_request_bytes(requests[2])) == first
    for i, request in requests.items():
        answer = first if i == 2 else clients[i].answer(wire.UNMASKING, wire.unmask_request_bytes(request))
        server.receive_unmask(wire.parse_unmask_response(answer))
    total = server.finish()
    assert int(total[-1]) == 1 + 2 + 3 + 4
    with pytest.raises(SecAggError, match="unknown phase"):
        clients[1].answer("secagg/unknown", b"")


@settings(max_examples=300, deadline=None)
@given(payload=st.binary(max_size=512),
       parse=st.sampled_from([wire.parse_setup, wire.parse_public_keys, wire.parse_neighbour_keys,
                              wire.parse_share_keys, wire.parse_forwarded_shares, wire.parse_unmask_request,
                              wire.parse_unmask_response]))
def test_any_bytes_parse_to_a_message_or_a_clear_refusal(payload: bytes, parse) -> None:
    try:
        parse(payload)
    except SecAggError as exc:
        assert str(exc)


@pytest.mark.parametrize("strategy", ["median", "trimmed-mean", "krum"])
def test_strategies_that_need_every_update_are_refused(strategy: str) -> None:
    mode = SecureAggregation(SecAggSettings(clip=0.1))
    with pytest.raises(ValueError, match=f"--strategy {strategy} needs every client's update"):
        mode.check(ServerConfig(min_clients=2), make_strategy(strategy))


def test_central_and_local_dp_are_refused_with_the_reason() -> None:
    from fedstream.server.aggregation.privacy import make_dp_strategy

    mode = SecureAggregation(SecAggSettings(clip=0.1))
    for kind in ("central", "local"):
        strategy = make_dp_strategy(make_strategy("fedavg"), kind, "1.0", 1.0, 1e-5, None, {})
        with pytest.raises(ValueError, match="distributed DP .* is not built"):
            mode.check(ServerConfig(min_clients=2), strategy)


@pytest.mark.parametrize("settings_, flag", [(dict(clip=0.0), "--secagg-clip"), (dict(clip=0.1, bits=1), "--secagg-bits"),
                                            (dict(clip=0.1, neighbours=5), "--secagg-neighbours"),
                                            (dict(clip=0.1, neighbours=8, threshold=4), "--secagg-threshold")])
def test_unsafe_settings_are_refused_naming_the_flag(settings_: dict, flag: str) -> None:
    with pytest.raises(ValueError, match=flag):
        SecureAggregation(SecAggSettings(**settings_))


def test_the_command_line_needs_a_clip(capsys) -> None:
    from fedstream.cli import main

    with pytest.raises(SystemExit):
        main(["server", "--insecure", "--secure-aggregation", "--rounds", "1"])
    assert "--secure-aggregation needs --secagg-clip" in capsys.readouterr().err
