"""A real gRPC server and coordinator in the test process (127.0.0.1:0), and clients that speak raw protocol.

For tests that need to send what no honest client sends (hostile input, replays, forged ids) and to look at the
coordinator's state afterwards.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import grpc
import torch

from fedstream.client.connection import SERVICE, CoordinatorStub, open_channel
from fedstream.client.transfer import download, upload_messages
from fedstream.common.wire.manifest import encode_state
from fedstream.common.proto import coordinator_pb2 as pb
from fedstream.common.wire.protocol import PROTOCOL_VERSION
from fedstream.common.tasks import load_task
from fedstream.common.wire.framing import DataChunk
from fedstream.server.transport.server import ServerThread
from fedstream.server.transport.auth import Authenticator
from fedstream.server.core.config import ServerConfig
from fedstream.server.core.coordinator import Coordinator
from fedstream.server.modes import SyncRounds
from fedstream.server.aggregation.strategies import make_strategy

TASK_OPTIONS = {"hidden": "16"}
CHUNK_BYTES = 4096


@dataclass
class Member:
    """One protocol-level client: its id, session and stub."""

    client_id: str
    stub: CoordinatorStub
    channel: grpc.Channel
    session: pb.JoinReply | None = None
    num_examples: int = 100

    @property
    def session_id(self) -> str:
        return self.session.session_id if self.session else ""


@dataclass
class Federation:
    coordinator: Coordinator
    server: ServerThread
    port: int
    thread: threading.Thread
    members: dict[str, Member] = field(default_factory=dict)
    initial: "OrderedDict[str, torch.Tensor]" = field(default_factory=OrderedDict)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def member(self, client_id: str, credentials: grpc.ChannelCredentials | None = None,
               server_name: str | None = None) -> Member:
        channel = open_channel(self.address, credentials, server_name)
        member = Member(client_id, CoordinatorStub(channel), channel)
        self.members[client_id] = member
        return member

    def join(self, client_id: str, token: str = "", **channel: object) -> Member:
        member = self.member(client_id, **channel)
        member.session = member.stub.Join(pb.JoinRequest(client_id=client_id, protocol_version=PROTOCOL_VERSION,
                                                         device="cpu", codecs=["raw"], token=token,
                                                         num_examples=member.num_examples), timeout=10)
        return member

    def wait_round(self, number: int, selected: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rnd = self.coordinator.mode.round
            if rnd is not None and rnd.number == number and len(rnd.selected) >= selected:
                return
            time.sleep(0.01)
        raise AssertionError(f"round {number} with {selected} clients did not start within {timeout} s")

    def wait_completed(self, rounds: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while self.coordinator.completed_rounds < rounds or len(self.coordinator.runlog.records()) < rounds:
            if time.monotonic() > deadline:
                raise AssertionError(f"round {rounds} did not complete within {timeout} s")
            time.sleep(0.01)

    def raw(self, method: str, kind: str = "unary_unary"):
        """A callable that sends bytes as they are to a method (no client-side serialisation)."""
        channel = open_channel(self.address)
        return getattr(channel, kind)(SERVICE + method, request_serializer=lambda b: b,
                                      response_deserializer=lambda b: b)

    def close(self) -> None:
        self.coordinator.stop("test over")
        for member in self.members.values():
            member.channel.close()
        self.server.stop()
        self.thread.join(timeout=10)


def start_federation(run_dir: Path, credentials: grpc.ServerCredentials | None = None,
                     auth: Authenticator | None = None, **config: object) -> Federation:
    """Coordinator + gRPC server on 127.0.0.1:0 with its round loop on a thread (digits, a 16-unit MLP)."""
    task = load_task("digits", TASK_OPTIONS)
    settings = {"rounds": 3, "min_clients": 2, "round_timeout": 600.0, "wait_for_clients": 600.0, **config}
    coordinator = Coordinator(task, make_strategy("fedavg"), ServerConfig(run_dir=run_dir, chunk_bytes=CHUNK_BYTES,
                                                                          **settings), SyncRounds())
    server = ServerThread(coordinator, credentials=credentials, auth=auth)
    port = server.port
    thread = threading.Thread(target=coordinator.run, name="round-loop", daemon=True)
    thread.start()
    initial = OrderedDict((k, v.clone()) for k, v in coordinator.global_state.items())
    return Federation(coordinator, server, port, thread, initial=initial)


def random_delta(reference: dict[str, torch.Tensor], seed: int, scale: float = 0.01) -> "OrderedDict[str, torch.Tensor]":
    g = torch.Generator().manual_seed(seed)
    return OrderedDict((k, torch.randn(v.shape, generator=g) * scale) for k, v in reference.items())


def upload_stream(member: Member, round_number: int, base_version: int, delta: dict[str, torch.Tensor],
                  num_examples: int | None = None, upload_id: str | None = None) -> list:
    """The messages an honest client sends for delta: header, data chunks, trailer."""
    manifest, buffers = encode_state(delta, "raw")
    header = pb.UpdateHeader(session_id=member.session_id, round=round_number, base_version=base_version,
                             num_examples=member.num_examples if num_examples is None else num_examples,
                             metrics={"train_loss": 0.5}, manifest=manifest, upload_id=upload_id or uuid.uuid4().hex)
    return [DataChunk(memoryview(bytes(m.data))) if isinstance(m, DataChunk) else m
            for m in upload_messages(header, buffers, CHUNK_BYTES)]


def send(member: Member, messages: Iterable) -> pb.UploadReply:
    return member.stub.UploadUpdate(iter(list(messages)), timeout=10)


def fetch(member: Member, version: int):
    return download(member.stub, member.session_id, version, timeout=10)
