"""Hostile input against a real gRPC server: each bad message gets its own status code and message, the offending
stream is dropped, and neither the global model nor the round's other updates are touched."""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import grpc
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedstream.common.wire.manifest import decode_state
from fedstream.common.proto import coordinator_pb2 as pb
from fedstream.common.wire.protocol import PROTOCOL_VERSION
from fedstream.common.wire.framing import Crc32, DataChunk, deserializer, frame_data
from tests.inprocess import Federation, fetch, random_delta, send, start_federation, upload_stream

Code = grpc.StatusCode
Mutation = Callable[[list], list]


@pytest.fixture
def fed(tmp_path: Path):
    federation = start_federation(tmp_path / "run", rounds=2, min_clients=2)
    yield federation
    federation.close()


def _header(messages: list) -> pb.UpdateHeader:
    return messages[0].header


def _spec(messages: list, index: int = 0) -> pb.TensorSpec:
    return _header(messages).manifest.tensors[index]


def _retrailer(messages: list) -> list:
    """Recomputes the trailer over the data as it now is (so only the intended defect remains)."""
    crc = Crc32()
    for m in messages:
        if isinstance(m, DataChunk):
            crc.update(m.data)
    return [m for m in messages if not (isinstance(m, pb.UpdateChunk) and m.WhichOneof("part") == "trailer")] + [
        pb.UpdateChunk(trailer=pb.Trailer(crc32=crc.value, total_bytes=crc.nbytes))]


def _set(fn: Callable[[list], object]) -> Mutation:
    def mutate(messages: list) -> list:
        fn(messages)
        return messages
    return mutate


def _data_indices(messages: list) -> list[int]:
    return [i for i, m in enumerate(messages) if isinstance(m, DataChunk)]


def _flip_byte(messages: list) -> list:
    i = _data_indices(messages)[0]
    data = bytearray(messages[i].data)
    data[7] ^= 0x40
    messages[i] = DataChunk(memoryview(bytes(data)))
    return messages


def _grow_spec(messages: list) -> None:
    _spec(messages).byte_length += 4
    _header(messages).manifest.total_bytes += 4


def _shrink_codec(messages: list) -> None:
    spec = _spec(messages)
    _header(messages).manifest.total_bytes -= spec.byte_length // 2
    spec.codec, spec.byte_length = "fp16", spec.byte_length // 2


def _drop_spec(messages: list) -> None:
    manifest = _header(messages).manifest
    manifest.total_bytes -= manifest.tensors[-1].byte_length
    del manifest.tensors[-1]


def _poison(value: float) -> Mutation:
    def mutate(messages: list) -> list:
        i = _data_indices(messages)[0]
        data = bytearray(messages[i].data)
        data[0:4] = torch.tensor([value], dtype=torch.float32).numpy().tobytes()
        messages[i] = DataChunk(memoryview(bytes(data)))
        return _retrailer(messages)
    return mutate


# (what is wrong, how to make it so, expected status, words the message must contain)
UPLOAD_CASES: list[tuple[str, Mutation, Code, str]] = [
    ("unknown tensor name", _set(lambda m: setattr(_spec(m), "name", "fc.bogus")), Code.INVALID_ARGUMENT, "unknown tensor"),
    ("wrong shape", _set(lambda m: _spec(m).shape.append(1)), Code.INVALID_ARGUMENT, "sent shape"),
    ("wrong dtype", _set(lambda m: setattr(_spec(m), "dtype", "float64")), Code.INVALID_ARGUMENT, "sent dtype float64"),
    ("unsupported dtype", _set(lambda m: setattr(_spec(m), "dtype", "complex32")), Code.INVALID_ARGUMENT, "dtype"),
    ("codec the session may not use", _set(_shrink_codec), Code.INVALID_ARGUMENT, "used codec 'fp16'"),
    ("tensor left out", _set(_drop_spec), Code.INVALID_ARGUMENT, "left out 1 tensor"),
    ("tensor sent twice", _set(lambda m: _header(m).manifest.tensors.append(_spec(m))), Code.INVALID_ARGUMENT, "twice"),
    ("tensor byte count disagrees with its shape", _set(_grow_spec), Code.INVALID_ARGUMENT, "it must be"),
    ("manifest total disagrees with its tensors", _set(lambda m: setattr(_header(m).manifest, "total_bytes", 12)),
     Code.INVALID_ARGUMENT, "total_bytes=12"),
    ("NaN in a tensor", _poison(math.nan), Code.INVALID_ARGUMENT, "NaN or Inf"),
    ("Inf in a tensor", _poison(math.inf), Code.INVALID_ARGUMENT, "NaN or Inf"),
    ("stream shorter than its manifest", lambda m: _retrailer(m[:-2]), Code.DATA_LOSS, "stream ended after"),
    ("stream longer than its manifest", lambda m: m[:-1] + [DataChunk(memoryview(b"x" * 64))] + m[-1:],
     Code.INVALID_ARGUMENT, "more than the"),
    ("bad checksum", _set(lambda m: setattr(m[-1].trailer, "crc32", m[-1].trailer.crc32 ^ 1)), Code.DATA_LOSS,
     "checksum mismatch"),
    ("corrupted byte in transit", _flip_byte, Code.DATA_LOSS, "checksum mismatch"),
    ("trailer byte count disagrees", _set(lambda m: setattr(m[-1].trailer, "total_bytes", 5)), Code.DATA_LOSS,
     "trailer 5"),
    ("no trailer", lambda m: m[:-1], Code.INVALID_ARGUMENT, "without a trailer"),
    ("data after the trailer", lambda m: m + [DataChunk(memoryview(b"late"))], Code.INVALID_ARGUMENT, "after the trailer"),
    ("second header", lambda m: m[:2] + [m[0]] + m[2:], Code.INVALID_ARGUMENT, "second header"),
    ("empty message mid-stream", lambda m: m[:2] + [pb.UpdateChunk()] + m[2:], Code.INVALID_ARGUMENT, "empty message"),
    ("no header", lambda m: m[1:], Code.INVALID_ARGUMENT, "must start with an UpdateHeader"),
    ("empty stream", lambda m: [], Code.INVALID_ARGUMENT, "must start with an UpdateHeader"),
    ("unknown session", _set(lambda m: setattr(_header(m), "session_id", "f" * 32)), Code.UNAUTHENTICATED,
     "unknown or expired session"),
    ("old round", _set(lambda m: setattr(_header(m), "round", 0)), Code.FAILED_PRECONDITION, "update for round 0"),
    ("future round", _set(lambda m: setattr(_header(m), "round", 9)), Code.FAILED_PRECONDITION, "update for round 9"),
    ("base version other than the one sent", _set(lambda m: setattr(_header(m), "base_version", 4)),
     Code.FAILED_PRECONDITION, "trained on version 4"),
    ("more examples than it joined with", _set(lambda m: setattr(_header(m), "num_examples", 10**12)),
     Code.INVALID_ARGUMENT, "num_examples=1000000000000"),
    ("negative examples", _set(lambda m: setattr(_header(m), "num_examples", -1)), Code.INVALID_ARGUMENT,
     "num_examples=-1"),
    ("NaN metric", _set(lambda m: _header(m).metrics.__setitem__("train_loss", math.nan)), Code.INVALID_ARGUMENT,
     "values must be finite"),
    ("oversized upload_id", _set(lambda m: setattr(_header(m), "upload_id", "u" * 500)), Code.INVALID_ARGUMENT,
     "500-char upload_id"),
]


def _expect(call: Callable[[], object], code: Code, words: str, case: str) -> str:
    with pytest.raises(grpc.RpcError) as info:
        call()
    assert info.value.code() == code, f"{case}: got {info.value.code().name} ({info.value.details()}), want {code.name}"
    assert words in info.value.details(), f"{case}: {info.value.details()!r} does not say {words!r}"
    return info.value.details()


def _fed_avg(initial: OrderedDict, deltas: list[tuple[dict, int]]) -> OrderedDict:
    total = sum(n for _, n in deltas)
    return OrderedDict((k, v + sum(d[k].double() * n for d, n in deltas).float() / total) for k, v in initial.items())


def _assert_untouched(fed: Federation, round_number: int) -> None:
    rnd = fed.coordinator.mode.round
    assert rnd is not None and rnd.number == round_number and not rnd.accepted and not rnd.uploading
    assert rnd.aggregator is None or rnd.aggregator.count == 0
    assert fed.coordinator.spool.in_use == 0, "a refused stream still holds its spool file"
    for name, tensor in fed.initial.items():
        assert torch.equal(fed.coordinator.global_state[name], tensor), name


def test_every_hostile_upload_gets_its_own_status_and_leaves_model_and_round_untouched(fed: Federation) -> None:
    a, b = fed.join("a"), fed.join("b")
    fed.wait_round(1, 2)
    delta_a, delta_b = random_delta(fed.initial, 1), random_delta(fed.initial, 2)
    for case, mutate, code, words in UPLOAD_CASES:
        messages = mutate(upload_stream(a, 1, 0, delta_a))
        _expect(lambda: send(a, messages), code, words, case)
        _assert_untouched(fed, 1)

    late = fed.join("late")
    _expect(lambda: send(late, upload_stream(late, 1, 0, delta_a)), Code.PERMISSION_DENIED, "not sampled", "not sampled")
    undecodable = fed.raw("UploadUpdate", "stream_unary")
    _expect(lambda: undecodable(iter([b"\x0a\xff\xff\xff"]), timeout=10), Code.INVALID_ARGUMENT,
            "must start with an UpdateHeader", "undecodable header")
    _assert_untouched(fed, 1)

    honest_a = upload_stream(a, 1, 0, delta_a)
    assert send(a, honest_a).accepted
    replay = send(a, honest_a)
    assert replay.accepted and replay.duplicate, "a retried upload with the same upload_id must be counted once"
    _expect(lambda: send(a, upload_stream(a, 1, 0, delta_b)), Code.ALREADY_EXISTS, "already delivered", "second update")
    assert fed.coordinator.mode.round.aggregator.count == 1
    assert send(b, upload_stream(b, 1, 0, delta_b)).accepted
    fed.wait_completed(1)
    expected = _fed_avg(fed.initial, [(delta_a, a.num_examples), (delta_b, b.num_examples)])
    for name, tensor in expected.items():
        assert torch.allclose(fed.coordinator.global_state[name], tensor, atol=1e-6), name
    record = fed.coordinator.runlog.records()[-1]
    assert record["round"] == 1 and record["clients"] == 2 and record["accepted"] == ["a", "b"]

    fed.wait_round(2, 2)
    _expect(lambda: send(a, honest_a), Code.FAILED_PRECONDITION, "update for round 1; round 2 is open", "replayed round")
    _expect(lambda: send(a, upload_stream(a, 2, 0, delta_a)), Code.FAILED_PRECONDITION,
            "trained on version 0; round 2 started from version 1", "stale base version")


def test_oversized_update_is_refused_before_any_byte_is_spooled(tmp_path: Path) -> None:
    fed = start_federation(tmp_path / "run", min_clients=1, max_update_bytes=1000)
    try:
        a = fed.join("a")
        fed.wait_round(1, 1)
        _expect(lambda: send(a, upload_stream(a, 1, 0, random_delta(fed.initial, 1))), Code.RESOURCE_EXHAUSTED,
                "accepts at most 1000 bytes", "oversized")
        _assert_untouched(fed, 1)
    finally:
        fed.close()


def test_join_and_session_calls_refuse_bad_requests_with_precise_codes(fed: Federation) -> None:
    m = fed.member("x")
    join = lambda **kw: m.stub.Join(pb.JoinRequest(**{"client_id": "x", "protocol_version": PROTOCOL_VERSION, **kw}),
                                    timeout=10)
    _expect(lambda: join(protocol_version=PROTOCOL_VERSION + 1), Code.FAILED_PRECONDITION,
            f"speaks protocol v{PROTOCOL_VERSION + 1}", "protocol version")
    _expect(lambda: join(client_id=""), Code.INVALID_ARGUMENT, "client_id must be", "empty client id")
    _expect(lambda: join(num_examples=-5), Code.INVALID_ARGUMENT, "num_examples", "negative examples")
    _expect(lambda: join(device="d" * 1000), Code.INVALID_ARGUMENT, "too long", "long device")
    ghost = "0" * 32
    _expect(lambda: m.stub.GetTask(pb.TaskRequest(session_id=ghost, wait_ms=10), timeout=10), Code.UNAUTHENTICATED,
            "unknown or expired session", "GetTask")
    _expect(lambda: m.stub.Heartbeat(pb.HeartbeatRequest(session_id=ghost), timeout=10), Code.UNAUTHENTICATED,
            "unknown or expired session", "Heartbeat")
    _expect(lambda: list(m.stub.DownloadModel(pb.DownloadRequest(session_id=ghost), timeout=10)),
            Code.UNAUTHENTICATED, "unknown or expired session", "DownloadModel")
    member = fed.join("y")
    _expect(lambda: fetch(member, 3), Code.FAILED_PRECONDITION, "version 3 is not served", "unserved version")
    for method in ("Join", "GetTask", "Heartbeat", "Leave"):
        _expect(lambda: fed.raw(method)(b"\x0a\x05\xff\xfe\xfd\xfc\xfb", timeout=10), Code.INVALID_ARGUMENT,
                "not a valid protobuf message", f"undecodable {method}")
    assert fetch(member, 0).version == 0, "the server must still serve after refusing all of the above"


def test_expired_session_and_session_limit(tmp_path: Path) -> None:
    fed = start_federation(tmp_path / "run", min_clients=3, session_timeout=0.5, max_sessions=2)
    try:
        a, b = fed.join("a"), fed.join("b")
        _expect(lambda: fed.join("c"), Code.RESOURCE_EXHAUSTED, "limit of 2 sessions", "session limit")
        assert fed.join("a").session_id != a.session_id, "a known client may always rejoin"
        time.sleep(2.0)
        _expect(lambda: b.stub.Heartbeat(pb.HeartbeatRequest(session_id=b.session_id), timeout=10),
                Code.UNAUTHENTICATED, "unknown or expired session", "expired session")
        assert fed.join("c").session_id, "expired sessions free their slots"
    finally:
        fed.close()


# ----- property-based: random and mutated messages ------------------------------------------------------------

HOSTILE_CODES = {Code.INVALID_ARGUMENT, Code.FAILED_PRECONDITION, Code.UNAUTHENTICATED, Code.PERMISSION_DENIED,
                 Code.RESOURCE_EXHAUSTED, Code.DATA_LOSS, Code.ALREADY_EXISTS, Code.ABORTED}
FUZZ_CASES = 1000
FUZZ_CLIENTS = [f"f{i}" for i in range(24)]


def _mutations() -> st.SearchStrategy:
    """One edit of an honest upload: a field set to a random value, a message dropped, duplicated or corrupted."""
    ints = st.integers(min_value=-2**63, max_value=2**63 - 1)
    small = st.integers(min_value=-3, max_value=6)
    return st.one_of(
        st.tuples(st.just("header_int"), st.sampled_from(["round", "base_version", "num_examples"]), small),
        st.tuples(st.just("header_int"), st.sampled_from(["num_examples"]), ints),
        st.tuples(st.just("session"), st.text(max_size=40)),
        st.tuples(st.just("upload_id"), st.text(max_size=300)),
        st.tuples(st.just("metric"), st.text(max_size=20), st.floats(allow_nan=True, allow_infinity=True)),
        st.tuples(st.just("spec_name"), st.integers(0, 5), st.text(max_size=30)),
        st.tuples(st.just("spec_dtype"), st.integers(0, 5), st.sampled_from(["float32", "float16", "int64", "bool", "x", ""])),
        st.tuples(st.just("spec_shape"), st.integers(0, 5), st.lists(st.integers(-2, 2**40), max_size=4)),
        st.tuples(st.just("spec_codec"), st.integers(0, 5), st.sampled_from(["raw", "fp16", "bf16", "zstd", "", "??"])),
        st.tuples(st.just("spec_bytes"), st.integers(0, 5), ints),
        st.tuples(st.just("total_bytes"), ints),
        st.tuples(st.just("drop"), st.integers(0, 10)),
        st.tuples(st.just("duplicate"), st.integers(0, 10)),
        st.tuples(st.just("swap"), st.integers(0, 10), st.integers(0, 10)),
        st.tuples(st.just("corrupt"), st.integers(0, 10), st.integers(0, 4095), st.integers(1, 255)),
        st.tuples(st.just("poison"), st.integers(0, 10), st.sampled_from([math.nan, math.inf, -math.inf, 1e6])),
        st.tuples(st.just("garbage"), st.integers(0, 10), st.binary(max_size=64)),
        st.tuples(st.just("trailer"), st.integers(0, 2**32 - 1), ints),
        st.tuples(st.just("retrailer"),),
    )


def _apply(messages: list, mutation: tuple) -> list:
    kind, *args = mutation
    headers = [m for m in messages if isinstance(m, pb.UpdateChunk) and m.HasField("header")]
    header = headers[0].header if headers else pb.UpdateHeader()
    specs = header.manifest.tensors
    if kind == "header_int":
        try:
            setattr(header, args[0], args[1])
        except ValueError:  # out of the field's range: protobuf refuses it on our side
            pass
    elif kind == "session":
        header.session_id = args[0]
    elif kind == "upload_id":
        header.upload_id = args[0]
    elif kind == "metric":
        header.metrics[args[0]] = args[1]
    elif kind.startswith("spec_") and specs:
        spec = specs[args[0] % len(specs)]
        if kind == "spec_shape":
            del spec.shape[:]
            spec.shape.extend(args[1])
        else:
            setattr(spec, {"spec_name": "name", "spec_dtype": "dtype", "spec_codec": "codec",
                           "spec_bytes": "byte_length"}[kind], args[1])
    elif kind == "total_bytes":
        header.manifest.total_bytes = args[0]
    elif kind == "drop":
        del messages[args[0] % len(messages)]
    elif kind == "duplicate":
        i = args[0] % len(messages)
        messages.insert(i, messages[i])
    elif kind == "swap":
        i, j = args[0] % len(messages), args[1] % len(messages)
        messages[i], messages[j] = messages[j], messages[i]
    elif kind in ("corrupt", "poison"):
        data = _data_indices(messages)
        if data:
            i = data[args[0] % len(data)]
            buf = bytearray(messages[i].data)
            if kind == "corrupt":
                buf[args[1] % len(buf)] ^= args[2]
            else:
                buf[0:4] = torch.tensor([args[1]], dtype=torch.float32).numpy().tobytes()
            messages[i] = DataChunk(memoryview(bytes(buf)))
    elif kind == "garbage":
        messages.insert(args[0] % (len(messages) + 1), args[1])
    elif kind == "trailer" and isinstance(messages[-1], pb.UpdateChunk) and messages[-1].HasField("trailer"):
        messages[-1].trailer.crc32, messages[-1].trailer.total_bytes = args[0], args[1]
    elif kind == "retrailer":
        return _retrailer(messages)
    return messages


def _as_bytes(message: object) -> bytes:
    if isinstance(message, bytes):
        return message
    if isinstance(message, DataChunk):
        return frame_data(message.data)
    return message.SerializeToString()


def _sent_delta(frames: list[bytes]) -> tuple[OrderedDict, int]:
    """The update exactly as the bytes on the wire carry it (what the server must have folded, if it accepted it)."""
    parse = deserializer(pb.UpdateChunk)
    messages = [parse(f) for f in frames]
    header = messages[0].header
    data = b"".join(bytes(m.data) for m in messages if isinstance(m, DataChunk))
    return decode_state(header.manifest, bytearray(data)), header.num_examples


def test_fuzzed_messages_never_crash_the_server_or_leak_into_the_model(tmp_path: Path) -> None:
    fed = start_federation(tmp_path / "run", rounds=1, min_clients=len(FUZZ_CLIENTS) + 1)
    members = {cid: fed.join(cid) for cid in FUZZ_CLIENTS + ["closer"]}
    fed.wait_round(1, len(members))
    upload_raw = fed.raw("UploadUpdate", "stream_unary")
    unary = {m: fed.raw(m) for m in ("Join", "GetTask", "Heartbeat", "Leave")}
    download_raw = fed.raw("DownloadModel", "unary_stream")
    accepted: dict[str, tuple[OrderedDict, int]] = {}
    outcomes: dict[str, int] = {}

    @settings(max_examples=FUZZ_CASES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.sampled_from(FUZZ_CLIENTS), st.integers(0, 2**16), st.lists(_mutations(), min_size=1, max_size=4),
           st.sampled_from(["upload", "upload", "upload", "unary", "download"]), st.binary(max_size=200))
    def case(client: str, seed: int, mutations: list, target: str, noise: bytes) -> None:
        try:
            if target == "upload":
                messages = upload_stream(members[client], 1, 0, random_delta(fed.initial, seed))
                for mutation in mutations:
                    messages = _apply(messages, mutation)
                frames = [_as_bytes(m) for m in messages]
                reply = pb.UploadReply.FromString(upload_raw(iter(frames), timeout=10))
                if reply.accepted and not reply.duplicate:
                    accepted[client] = _sent_delta(frames)
                outcome = "duplicate" if reply.duplicate else "accepted"
            elif target == "unary":
                unary[["Join", "GetTask", "Heartbeat", "Leave"][seed % 4]](noise, timeout=10)
                outcome = "unary ok"
            else:
                list(download_raw(noise, timeout=10))
                outcome = "download ok"
        except grpc.RpcError as exc:
            assert exc.code() in HOSTILE_CODES, f"{exc.code().name}: {exc.details()}"
            outcome = exc.code().name
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

    case()
    cases = sum(outcomes.values())
    print(f"\nhostile-input fuzz: {cases} cases; outcomes {dict(sorted(outcomes.items()))}")
    assert cases >= FUZZ_CASES and len(outcomes) >= 5, outcomes

    coordinator = fed.coordinator
    try:
        assert coordinator.completed_rounds == 0 and coordinator.version == 0
        for name, tensor in fed.initial.items():
            assert torch.equal(coordinator.global_state[name], tensor), name
        rnd = coordinator.mode.round
        assert sorted(rnd.accepted) == sorted(accepted) and not rnd.uploading
        # Everyone still standing delivers an honest update; the closed round must be exactly their FedAvg.
        for cid, member in members.items():
            if cid not in accepted:
                try:
                    delta = random_delta(fed.initial, 999)
                    if send(member, upload_stream(member, 1, 0, delta)).accepted:
                        accepted[cid] = (delta, member.num_examples)
                except grpc.RpcError as exc:
                    assert exc.code() == Code.UNAUTHENTICATED, exc.details()  # its session was ended by a fuzzed Leave
        fed.wait_completed(1)
        record = coordinator.runlog.records()[-1]
        assert record["accepted"] == sorted(accepted)
        expected = _fed_avg(fed.initial, list(accepted.values()))
        for name, tensor in expected.items():
            assert torch.allclose(coordinator.global_state[name], tensor, atol=1e-5), name
    finally:
        fed.close()


def test_one_upload_in_flight_per_client(tmp_path: Path) -> None:
    import threading

    fed = start_federation(tmp_path / "run", min_clients=1)
    try:
        a = fed.join("a")
        fed.wait_round(1, 1)
        messages = upload_stream(a, 1, 0, random_delta(fed.initial, 1))
        release = threading.Event()

        def held_open():
            yield messages[0]
            release.wait(timeout=10)
            yield from messages[1:]

        first = a.stub.UploadUpdate.future(held_open(), timeout=20)
        deadline = time.monotonic() + 10
        while "a" not in fed.coordinator.mode.round.uploading:
            assert time.monotonic() < deadline, "the first upload never began"
            time.sleep(0.01)
        _expect(lambda: send(a, upload_stream(a, 1, 0, random_delta(fed.initial, 2))), Code.ABORTED,
                "already has an upload in flight", "second concurrent upload")
        release.set()
        assert first.result().accepted, "the upload that was first must still go through"
    finally:
        fed.close()
