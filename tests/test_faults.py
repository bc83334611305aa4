"""Faults a federation must survive, with real server and client processes on 127.0.0.1 (and a few in-process
checks of the same machinery): clients killed mid-upload, stragglers, servers killed mid-round and between rounds,
torn checkpoints, replayed uploads, SIGTERM."""

from __future__ import annotations

import json
import signal
import socket
import time
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from safetensors import safe_open
from safetensors.torch import load_file

from fedstream.client.connection import CoordinatorStub, open_channel
from fedstream.common.proto import coordinator_pb2 as pb
from fedstream.common.wire.protocol import PROTOCOL_VERSION
from fedstream.common.tasks import load_task
from fedstream.server.publication.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from fedstream.server.core.config import ServerConfig
from fedstream.server.core.coordinator import Coordinator
from fedstream.server.modes import SyncRounds
from fedstream.server.aggregation.strategies import make_strategy
from tests.harness import ServerProcess, start_client, start_server, wait_all
from tests.inprocess import Member, random_delta, send, start_federation, upload_stream

pytestmark = pytest.mark.slow

SEED = 7
SMALL = ("--task-option", "hidden=16", "--local-epochs", "1")
CLIENT = ("--device", "cpu", "--task-option", "hidden=16")


def wait_for(condition: Callable[[], object], timeout: float, what: str, server: ServerProcess | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            detail = f"; server log:\n{server.log()[-3000:]}" if server else ""
            raise AssertionError(f"timed out after {timeout} s waiting for {what}{detail}")
        time.sleep(0.05)


def records(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def checkpointed_rounds(run_dir: Path) -> int:
    path = run_dir / "checkpoint" / "state.json"
    try:
        return int(json.loads(path.read_text())["completed_rounds"])
    except (OSError, ValueError, KeyError):
        return 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def initial_model() -> "OrderedDict[str, torch.Tensor]":
    torch.manual_seed(SEED)
    return OrderedDict((k, v.clone()) for k, v in load_task("digits", {"hidden": "16"}).make_model().state_dict().items())


def offline_fedavg(updates_dir: Path, run: list[dict]) -> "OrderedDict[str, torch.Tensor]":
    """FedAvg replayed from the deltas clients saved, over exactly the clients each round's record accepted."""
    state = initial_model()
    for record in run:
        deltas = []
        for client in record["accepted"]:
            path = updates_dir / f"{client}-round{record['round']}.safetensors"
            with safe_open(str(path), "pt") as f:
                meta = f.metadata()
            assert int(meta["base_version"]) == record["version"] - 1, (client, record)
            deltas.append((load_file(str(path)), int(meta["num_examples"])))
        total = sum(n for _, n in deltas)
        for name in state:
            state[name] = state[name] + sum(d[name].double() * n for d, n in deltas).float() / total
    return state


def assert_same_model(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], atol: float = 1e-6) -> None:
    for name, tensor in expected.items():
        assert torch.allclose(actual[name], tensor, atol=atol, rtol=0), f"{name} differs by " \
            f"{float((actual[name] - tensor).abs().max()):.3g}"


def test_client_sigkilled_mid_upload_round_closes_with_survivors_and_the_client_rejoins(tmp_path: Path) -> None:
    run_dir, updates = tmp_path / "run", tmp_path / "updates"
    server = start_server(run_dir, "--rounds", "3", "--clients-per-round", "3", "--min-clients", "2",
                          "--round-timeout", "30", "--seed", str(SEED), "--chunk-bytes", "4096", *SMALL)
    try:
        save = ("--save-updates", str(updates))
        survivors = [start_client(server, *CLIENT, *save, "--partition", f"{i}/3") for i in range(2)]
        victim = start_client(server, *CLIENT, *save, "--partition", "2/3", "--upload-chunk-delay", "3",
                              log_name="victim")
        victim_log = run_dir.parent / f"{run_dir.name}.victim.log"
        wait_for(lambda: "round=1 uploading" in victim_log.read_text(), 60, "the victim to start uploading", server)
        time.sleep(1.0)  # header sent, first data chunk not yet: the stream is half open
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        wait_for(lambda: records(run_dir), 60, "round 1 to close without the victim", server)
        restarted = start_client(server, *CLIENT, *save, "--partition", "2/3", log_name="restarted")
        assert server.wait(timeout=120) == 0, server.log()[-3000:]
        assert wait_all([*survivors, restarted], timeout=60) == [0, 0, 0]
    finally:
        server.stop()
    run = records(run_dir)
    assert [r["round"] for r in run] == [1, 2, 3]
    assert run[0]["accepted"] == ["client-0", "client-1"], run[0]
    reason = run[0]["dropped"]["client-2"]
    assert "upload stream broke" in reason or "ended without a trailer" in reason, reason
    assert any("client-2" in r["accepted"] for r in run[1:]), "the restarted client was never used again"
    assert (updates / "client-2-round1.safetensors").exists(), "the victim had computed its round-1 update"
    assert_same_model(load_file(str(run_dir / "model.safetensors")), offline_fedavg(updates, run))
    for line in server.log().splitlines():
        if "update accepted" in line or "upload dropped" in line:
            assert "round=" in line and "client=" in line, line


def test_straggler_is_dropped_at_the_deadline_and_the_metrics_say_who_and_why(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    server = start_server(run_dir, "--rounds", "2", "--clients-per-round", "3", "--min-clients", "2",
                          "--round-timeout", "4",
                          "--session-timeout", "3", "--heartbeat-seconds", "1", *SMALL)
    try:
        prompt = [start_client(server, *CLIENT, "--partition", f"{i}/3") for i in range(2)]
        straggler = start_client(server, *CLIENT, "--partition", "2/3", "--slowdown", "100000")
        wait_for(lambda: len(records(run_dir)) == 2, 90, "two rounds", server)
        straggler.kill()
        assert server.wait(timeout=30) == 0, server.log()[-3000:]
        assert wait_all(prompt, timeout=30) == [0, 0]
    finally:
        server.stop()
    for record in records(run_dir):
        assert record["accepted"] == ["client-0", "client-1"] and record["selected"] == 3
        assert record["dropped"] == {"client-2": "round deadline of 4 s passed"}, record["dropped"]
        assert 3.5 <= record["seconds"] < 30, record["seconds"]


def test_round_short_of_min_clients_is_retried_as_a_new_attempt(tmp_path: Path) -> None:
    fed = start_federation(tmp_path / "run", rounds=1, min_clients=2, round_timeout=1.0)
    try:
        a, b = fed.join("a"), fed.join("b")
        fed.wait_round(1, 2)
        assert send(a, upload_stream(a, 1, 0, random_delta(fed.initial, 1))).accepted
        wait_for(lambda: fed.coordinator.mode.round is not None and fed.coordinator.mode.round.attempt == 2, 10, "attempt 2")
        for member, seed in ((a, 1), (b, 2)):
            assert send(member, upload_stream(member, 1, 0, random_delta(fed.initial, seed))).accepted
        fed.wait_completed(1)
    finally:
        fed.close()
    record = fed.coordinator.runlog.records()[-1]
    assert record["attempt"] == 2 and record["accepted"] == ["a", "b"]


def _server_flags(port: int | None) -> tuple[str, ...]:
    address = ("--address", f"127.0.0.1:{port}") if port else ()
    return ("--rounds", "3", "--min-clients", "2", "--seed", str(SEED), "--round-timeout", "60", "--chunk-bytes",
            "4096", *SMALL, *address)


def _federation(tmp_path: Path, name: str, port: int | None = None) -> tuple[ServerProcess, list]:
    """Two clients; client-0 paces its upload (two 4 KiB chunks, 0.5 s apart) so every round lasts over a second."""
    server = start_server(tmp_path / name, *_server_flags(port), name="server")
    clients = [start_client(server, *CLIENT, "--partition", f"{i}/2", *(("--upload-chunk-delay", "0.5") if i == 0 else ()))
               for i in range(2)]
    return server, clients


def test_server_sigkilled_mid_round_and_between_rounds_resumes_to_the_uninterrupted_model(tmp_path: Path) -> None:
    reference, clients = _federation(tmp_path, "reference")
    try:
        assert reference.wait(timeout=120) == 0, reference.log()[-3000:]
        assert wait_all(clients, timeout=60) == [0, 0]
    finally:
        reference.stop()
    expected = load_file(str(tmp_path / "reference" / "model.safetensors"))

    port = free_port()
    run_dir = tmp_path / "interrupted"
    server, clients = _federation(tmp_path, "interrupted", port)
    restarts: list[ServerProcess] = []
    try:
        wait_for(lambda: "round=2 uploading" in server.client_log(0) and checkpointed_rounds(run_dir) == 1, 90,
                 "client-0's round-2 upload, with round 1 checkpointed by its epilogue", server)
        server.process.send_signal(signal.SIGKILL)
        server.process.wait()
        assert checkpointed_rounds(run_dir) == 1, "killed mid-round 2: the checkpoint must hold round 1"
        second = start_server(run_dir, *_server_flags(port), name="server")
        restarts.append(second)
        wait_for(lambda: checkpointed_rounds(run_dir) >= 2, 120, "round 2's checkpoint", second)
        second.process.send_signal(signal.SIGKILL)
        second.process.wait()
        third = start_server(run_dir, *_server_flags(port), name="server")
        restarts.append(third)
        assert third.wait(timeout=120) == 0, third.log()[-3000:]
        assert wait_all(clients, timeout=60) == [0, 0], "clients must reconnect to the restarted server on their own"
    finally:
        for process in [server, *restarts]:
            process.stop()
    log = server.log()
    assert log.count("resumed run from") == 2 and "at round 1" in log
    assert [r["round"] for r in records(run_dir)] == [1, 2, 3], "every round logged exactly once"
    client_log = server.client_log(0)
    assert client_log.count("joined run") >= 3, "each restarted server must be rejoined:\n" + client_log[-3000:]
    assert_same_model(load_file(str(run_dir / "model.safetensors")), expected)


def test_torn_checkpoint_is_never_loaded_and_resume_falls_back_to_the_last_intact_one(tmp_path: Path) -> None:
    task = load_task("digits", {"hidden": "16"})
    torch.manual_seed(0)
    state = OrderedDict((k, v.clone()) for k, v in task.make_model().state_dict().items())
    run_dir = tmp_path / "run"
    for version in (1, 2, 3):
        stepped = OrderedDict((k, v + version) for k, v in state.items())
        save_checkpoint(run_dir, Checkpoint(stepped, version, version, {}, {"clients": ["a", "b"]}))
    directory = run_dir / "checkpoint"
    assert sorted(p.name for p in directory.glob("state-v*.json")) == ["state-v2.json", "state-v3.json"]
    assert load_checkpoint(run_dir).version == 3

    (directory / ".global-v4.safetensors.tmp").write_bytes(b"half a model")  # a crash mid-write of round 4
    model = directory / "global-v3.safetensors"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])  # torn newest model
    with (run_dir / "metrics.jsonl").open("w") as f:
        for r in (1, 2, 3):
            f.write(json.dumps({"round": r}) + "\n")
    loaded = load_checkpoint(run_dir)
    assert loaded.version == 2 and torch.equal(loaded.global_state[next(iter(state))], next(iter(state.values())) + 2)

    coordinator = Coordinator(task, make_strategy("fedavg"), ServerConfig(run_dir=run_dir), SyncRounds())
    assert coordinator.completed_rounds == 2 and coordinator.version == 2
    assert [r["round"] for r in coordinator.runlog.records()] == [1, 2], "round 3 will be redone and logged again"

    (directory / "state-v2.json").write_text('{"format": 1, "version": 2, "mod')  # torn JSON too
    with pytest.raises(CheckpointError, match="no intact checkpoint"):
        load_checkpoint(run_dir)


def test_replayed_and_stale_uploads_against_a_real_server_are_counted_once_or_refused(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    server = start_server(run_dir, "--rounds", "2", "--min-clients", "2", "--seed", str(SEED), "--round-timeout", "60",
                          "--chunk-bytes", "4096", *SMALL)
    channels = []
    try:
        members = {}
        for cid in ("a", "b"):
            channel = open_channel(server.address)
            channels.append(channel)
            member = Member(cid, CoordinatorStub(channel), channel)
            member.session = member.stub.Join(pb.JoinRequest(client_id=cid, protocol_version=PROTOCOL_VERSION,
                                                             num_examples=member.num_examples), timeout=30)
            members[cid] = member
        a, b = members["a"], members["b"]
        reference = initial_model()

        def task_for(member: Member) -> pb.Task:
            while True:
                task = member.stub.GetTask(pb.TaskRequest(session_id=member.session_id, wait_ms=1000), timeout=30)
                if task.kind == pb.Task.TRAIN:
                    return task

        deltas = {cid: random_delta(reference, seed) for seed, cid in enumerate("ab")}
        task = task_for(a)
        first = upload_stream(a, task.round, task.version, deltas["a"])
        assert send(a, first).accepted
        replay = send(a, first)
        assert replay.accepted and replay.duplicate
        task_for(b)
        assert send(b, upload_stream(b, 1, 0, deltas["b"])).accepted
        task = task_for(a)
        assert task.round == 2 and task.version == 1
        for messages, words in [(first, "update for round 1; round 2 is open"),
                                (upload_stream(a, 2, 0, deltas["a"]), "trained on version 0")]:
            with pytest.raises(grpc.RpcError) as info:
                send(a, messages)
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION and words in info.value.details()
        task_for(b)
        zero = OrderedDict((k, torch.zeros_like(v)) for k, v in reference.items())
        for member in (a, b):
            assert send(member, upload_stream(member, 2, 1, zero)).accepted
        assert server.wait(timeout=60) == 0, server.log()[-3000:]
    finally:
        for channel in channels:
            channel.close()
        server.stop()
    run = records(run_dir)
    assert [r["accepted"] for r in run] == [["a", "b"], ["a", "b"]]
    expected = OrderedDict((k, v + (deltas["a"][k] + deltas["b"][k]) / 2) for k, v in reference.items())
    assert_same_model(load_file(str(run_dir / "model.safetensors")), expected)


def test_sigterm_abandons_the_round_keeps_the_checkpoint_and_tells_clients_to_stop(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    server = start_server(run_dir, "--rounds", "50", "--min-clients", "2", "--round-timeout", "60", *SMALL)
    try:
        clients = [start_client(server, *CLIENT, "--partition", f"{i}/2", "--slowdown", "150") for i in range(2)]
        with grpc.insecure_channel(server.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", "fedstream.v1.Coordinator"):
                status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
                assert status == health_pb2.HealthCheckResponse.SERVING, service
        wait_for(lambda: "round=2 attempt=1 started" in server.log(), 90, "round 2", server)
        server.process.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0, server.log()[-3000:]
        assert wait_all(clients, timeout=30) == [0, 0]
    finally:
        server.stop()
    log = server.log()
    assert "stopped by SIGTERM after round 1" in log and "round=2 attempt=1 abandoned" in log
    assert checkpointed_rounds(run_dir) == 1 and [r["round"] for r in records(run_dir)] == [1]
    checkpoint = load_checkpoint(run_dir)
    assert_same_model(load_file(str(run_dir / "model.safetensors")), checkpoint.global_state, atol=0)
    assert all("server stopped by SIGTERM" in server.client_log(i) for i in range(2))


def test_clients_in_the_middle_of_a_long_round_stop_training_when_the_server_stops(tmp_path: Path) -> None:
    """They learn of the end from a heartbeat (every second here) instead of training on for minutes."""
    run_dir = tmp_path / "run"
    server = start_server(run_dir, "--rounds", "3", "--min-clients", "2", "--round-timeout", "600",
                          "--heartbeat-seconds", "1", *SMALL)
    try:
        clients = [start_client(server, *CLIENT, "--partition", f"{i}/2", "--slowdown", "100000") for i in range(2)]
        wait_for(lambda: all("uploading" not in server.client_log(i) and "joined run" in server.client_log(i)
                             for i in range(2)) and "round=1 attempt=1 started" in server.log(), 60, "round 1", server)
        time.sleep(2)  # both are now in their (100,000 times slowed) local training
        stopped = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0, server.log()[-3000:]
        assert wait_all(clients, timeout=30) == [0, 0], [server.client_log(i)[-2000:] for i in range(2)]
        assert time.monotonic() - stopped < 20
    finally:
        server.stop()
    for i in range(2):
        log = server.client_log(i)
        assert "round=1 training stopped: the run ended" in log and "server stopped by SIGTERM" in log, log[-2000:]
        assert "uploading" not in log
    assert records(run_dir) == []


def test_a_client_stopped_by_sigterm_leaves_the_federation(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    server = start_server(run_dir, "--rounds", "5", "--min-clients", "2", "--log-level", "INFO", *SMALL)
    try:
        client = start_client(server, *CLIENT, "--partition", "0/2")
        wait_for(lambda: "client-0 joined" in server.log(), 60, "client-0 to join", server)
        client.send_signal(signal.SIGTERM)
        assert client.wait(timeout=30) == 0, server.client_log(0)[-3000:]
        wait_for(lambda: "client=client-0 left: stopped by SIGTERM" in server.log(), 10, "client-0 to leave", server)
    finally:
        server.stop()
    assert "stopped by SIGTERM; leaving the federation" in server.client_log(0)


def test_a_flipped_bit_in_a_checkpoint_is_caught_and_older_sha256_checkpoints_still_load(tmp_path: Path) -> None:
    state = OrderedDict(w=torch.arange(64, dtype=torch.float32))
    run_dir = tmp_path / "run"
    for version in (1, 2):
        save_checkpoint(run_dir, Checkpoint(OrderedDict(w=state["w"] + version), version, version, {}, {}))
    directory = run_dir / "checkpoint"
    model = directory / "global-v2.safetensors"
    data = bytearray(model.read_bytes())
    data[-5] ^= 0x10  # same length, one bit of one weight
    model.write_bytes(bytes(data))
    assert load_checkpoint(run_dir).version == 1

    import hashlib

    meta_path = directory / "state-v1.json"
    meta = json.loads(meta_path.read_text())
    meta["sha256"] = {name: hashlib.sha256((directory / name).read_bytes()).hexdigest() for name in meta.pop("crc32")}
    meta_path.write_text(json.dumps(meta))
    assert load_checkpoint(run_dir).version == 1, "a checkpoint written with SHA-256 digests must still load"
    meta["sha256"][meta["model"]] = "0" * 64
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_checkpoint(run_dir)
