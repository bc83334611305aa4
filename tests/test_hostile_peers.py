"""Issue 12 on the server side: peers that try to cost it memory or time, or to steer or stop the federation.

Each test attacks the way an attacker would: raw gRPC calls against a real server (in-process on 127.0.0.1, or a
real server process with real clients for the flood), and checks the bound the defence promises.
"""

from __future__ import annotations

import json
import math
import resource
import subprocess
import sys
import textwrap
import threading
import time
from collections import OrderedDict
from pathlib import Path

import grpc
import pytest
import torch

from fedstream.common.proto import coordinator_pb2 as pb
from fedstream.common.wire.protocol import PROTOCOL_VERSION
from tests.harness import start_client, start_server, wait_all
from tests.inprocess import Federation, random_delta, send, start_federation, upload_stream


@pytest.fixture
def fed(tmp_path: Path):
    federation = start_federation(tmp_path / "run", rounds=2, min_clients=3, clients_per_round=3,
                                  round_timeout=60.0)
    yield federation
    federation.close()


def _round_one(fed: Federation, members: dict[str, int], deltas: dict[str, "OrderedDict[str, torch.Tensor]"]) -> None:
    """Every member joins with its claim; the round opens; each uploads its delta claiming as many examples as
    the server let its join keep (a larger header claim is refused outright: test_hostile_input)."""
    joined = []
    for client_id, examples in members.items():
        member = fed.member(client_id)
        member.session = member.stub.Join(pb.JoinRequest(client_id=client_id, protocol_version=PROTOCOL_VERSION,
                                                         device="cpu", codecs=["raw"], num_examples=examples),
                                          timeout=10)
        member.num_examples = min(examples, fed.coordinator.config.max_examples)
        joined.append(member)
    fed.wait_round(1, len(members))
    for member in joined:
        task = member.stub.GetTask(pb.TaskRequest(session_id=member.session_id, wait_ms=5000), timeout=10)
        assert task.kind == pb.Task.TRAIN
        try:
            send(member, upload_stream(member, 1, 0, deltas[member.client_id]))
        except grpc.RpcError as exc:
            member.refused = exc  # type: ignore[attr-defined]


def _expected(initial: dict[str, torch.Tensor], deltas: dict[str, dict[str, torch.Tensor]],
              weights: dict[str, float]) -> dict[str, torch.Tensor]:
    total = sum(weights.values())
    return {k: initial[k].double() + sum(weights[c] * deltas[c][k].double() for c in weights) / total
            for k in initial}


def test_a_claim_of_10_to_the_15_examples_counts_as_ten_median_clients(fed: Federation) -> None:
    deltas = {c: random_delta(fed.initial, seed) for seed, c in enumerate(("a", "b", "liar"))}
    _round_one(fed, {"a": 100, "b": 100, "liar": 10**15}, deltas)
    fed.wait_completed(1)
    record = fed.coordinator.runlog.records()[0]
    assert record["clipped_weight"] == ["liar"] and record["weight_cap"] == 1000.0
    expected = _expected(fed.initial, deltas, {"a": 100, "b": 100, "liar": 1000})
    for name, tensor in expected.items():
        assert torch.allclose(fed.coordinator.global_state[name].double(), tensor, atol=1e-5), name


def test_a_huge_finite_delta_is_scaled_to_the_norm_bound_and_the_model_survives(fed: Federation) -> None:
    deltas = {c: random_delta(fed.initial, seed) for seed, c in enumerate(("a", "b"))}
    deltas["big"] = OrderedDict((k, torch.full_like(v, 1e30)) for k, v in fed.initial.items())
    _round_one(fed, {"a": 100, "b": 100, "big": 100}, deltas)
    fed.wait_completed(1)
    record = fed.coordinator.runlog.records()[0]
    assert record["clipped_norm"] == ["big"]
    bound = record["norm_bound"]
    assert 0 < bound < 1e6
    change = math.sqrt(sum(float((fed.coordinator.global_state[k].double() - fed.initial[k].double()).pow(2).sum())
                           for k in fed.initial))
    assert change <= bound + 1.0, "the model moved further than the norm bound allows"
    assert record["eval_accuracy"] is not None and math.isfinite(record["eval_accuracy"])


def test_a_delta_that_would_overflow_the_sum_costs_only_itself(tmp_path: Path) -> None:
    fed = start_federation(tmp_path / "run", rounds=1, min_clients=2, clients_per_round=3, round_timeout=60.0,
                           max_update_norm=1e300)
    try:
        deltas = {c: random_delta(fed.initial, seed) for seed, c in enumerate(("a", "b"))}
        deltas["overflow"] = OrderedDict((k, torch.full_like(v, 1e38)) for k, v in fed.initial.items())
        _round_one(fed, {"a": 100, "b": 100, "overflow": 100}, deltas)
        refused = fed.members["overflow"].refused  # type: ignore[attr-defined]
        assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT and "overflow" in refused.details()
        fed.wait_completed(1)
        record = fed.coordinator.runlog.records()[0]
        assert record["accepted"] == ["a", "b"] and "overflow" in record["dropped"]
        expected = _expected(fed.initial, deltas, {"a": 100, "b": 100})
        for name, tensor in expected.items():
            assert torch.allclose(fed.coordinator.global_state[name].double(), tensor, atol=1e-5), name
    finally:
        fed.close()


def test_metrics_file_is_strict_json_when_a_client_reports_1e308(fed: Federation) -> None:
    deltas = {c: random_delta(fed.initial, seed) for seed, c in enumerate(("a", "b", "c"))}
    members = {}
    for client_id in ("a", "b", "c"):
        members[client_id] = fed.join(client_id)
    fed.wait_round(1, 3)
    for client_id, member in members.items():
        member.stub.GetTask(pb.TaskRequest(session_id=member.session_id, wait_ms=5000), timeout=10)
        messages = upload_stream(member, 1, 0, deltas[client_id])
        messages[0].header.metrics["train_loss"] = 1e308
        send(member, messages)
    fed.wait_completed(1)

    def refuse(constant: str) -> None:
        raise AssertionError(f"metrics.jsonl holds {constant}, which is not JSON")

    lines = (fed.coordinator.run_dir / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line, parse_constant=refuse) for line in lines]
    assert records[0]["train_loss"] is None


@pytest.mark.parametrize("client_id", ["evil\nINFO fedstream.server round=9 closed", "a b", "", "x" * 129, "-lead"])
def test_client_ids_outside_the_documented_set_are_refused_at_join(fed: Federation, client_id: str) -> None:
    member = fed.member("probe")
    with pytest.raises(grpc.RpcError) as info:
        member.stub.Join(pb.JoinRequest(client_id=client_id, protocol_version=PROTOCOL_VERSION), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "letters, digits" in info.value.details()


def test_gzip_compressed_requests_are_refused_before_they_inflate(fed: Federation) -> None:
    member = fed.member("zip")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    request = pb.JoinRequest(client_id="zip", protocol_version=PROTOCOL_VERSION, device="d" * (60 << 20))
    for _ in range(4):
        with pytest.raises(grpc.RpcError) as info:
            member.stub.Join(request, timeout=30, compression=grpc.Compression.Gzip)
        assert info.value.code() in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.INTERNAL,
                                     grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    # The client side builds the 60 MB request once per call; the server must not add 4 × 60 MB inflations.
    assert grown_mb < 200, f"peak RSS grew {grown_mb:.0f} MB"
    assert fed.join("after").session is not None, "the server still answers"


FLOOD = textwrap.dedent("""
    import asyncio, sys
    import grpc
    from fedstream.client.connection import SERVICE
    from fedstream.common.proto import coordinator_pb2 as pb
    from fedstream.common.wire.framing import deserializer, serializer

    async def main(address: str, seconds: float) -> None:
        async with grpc.aio.insecure_channel(address) as channel:
            upload = channel.stream_unary(SERVICE + "UploadUpdate", serializer, pb.UploadReply.FromString)
            poll = channel.unary_unary(SERVICE + "GetTask", pb.TaskRequest.SerializeToString, pb.Task.FromString)
            download = channel.unary_stream(SERVICE + "DownloadModel", pb.DownloadRequest.SerializeToString,
                                            deserializer(pb.ModelChunk))

            async def never_send():
                await asyncio.sleep(seconds)
                if False:
                    yield None

            async def silent_upload():
                try:
                    await upload(never_send(), timeout=seconds)
                except grpc.RpcError:
                    pass

            async def bogus_poll():
                try:
                    await poll(pb.TaskRequest(session_id="forged", wait_ms=30000), timeout=seconds)
                except grpc.RpcError:
                    pass

            async def cancelled_poll():
                call = poll(pb.TaskRequest(session_id="forged", wait_ms=30000), timeout=seconds)
                await asyncio.sleep(0.01)
                call.cancel()

            async def unread_download():
                call = download(pb.DownloadRequest(session_id="forged", version=0), timeout=seconds)
                await asyncio.sleep(seconds)
                call.cancel()

            calls = [f() for f in (silent_upload, bogus_poll, cancelled_poll, unread_download) for _ in range(300)]
            await asyncio.gather(*calls, return_exceptions=True)

    asyncio.run(main(sys.argv[1], float(sys.argv[2])))
""")


@pytest.mark.slow
def test_a_flood_of_unauthenticated_calls_delays_neither_heartbeats_nor_the_round(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    server = start_server(run_dir, "--rounds", "3", "--min-clients", "2", "--round-timeout", "30",
                          "--task-option", "hidden=16")
    try:
        clients = [start_client(server, "--partition", f"{i}/2", "--device", "cpu", "--task-option", "hidden=16")
                   for i in range(2)]
        channel = grpc.insecure_channel(server.address)
        beat = channel.unary_unary("/fedstream.v1.Coordinator/Heartbeat", pb.HeartbeatRequest.SerializeToString,
                                   pb.HeartbeatReply.FromString)
        flood = subprocess.Popen([sys.executable, "-c", FLOOD, server.address, "15"])
        latencies: list[float] = []
        failures: list[str] = []
        stop = threading.Event()

        def probe() -> None:
            while not stop.is_set():
                started = time.perf_counter()
                answered = True
                try:  # a heartbeat the server must answer (UNAUTHENTICATED: the probe holds no session)
                    beat(pb.HeartbeatRequest(session_id="probe"), timeout=5)
                except grpc.RpcError as exc:
                    answered = exc.code() == grpc.StatusCode.UNAUTHENTICATED
                    if not answered:
                        failures.append(f"{exc.code().name}: {exc.details()}")
                metrics = run_dir / "metrics.jsonl"
                if server.process.poll() is not None or (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
                    return  # the run is over (the server is closing its port): nothing more to say about the flood
                latencies.append(time.perf_counter() - started if answered else float("inf"))
                stop.wait(0.1)

        prober = threading.Thread(target=probe, daemon=True)
        prober.start()
        assert server.wait(timeout=180) == 0, server.log()[-3000:]
        stop.set()
        prober.join(timeout=10)
        flood.wait(timeout=60)
        assert wait_all(clients, timeout=60) == [0, 0]
    finally:
        server.stop()
    assert latencies and max(latencies) < 1.0, \
        f"slowest heartbeat {max(latencies):.2f} s of {len(latencies)}; failed: {failures[:3]}"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [1, 2, 3]
    assert all(r["seconds"] < 30 for r in records), [r["seconds"] for r in records]
