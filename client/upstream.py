"""A relay's link to its upstream coordinator: one client session with the "relay" capability.

It lives with the client because it is one (join, long-poll tasks, heartbeats, download a version, upload an
update, over the client's stubs and transfer code), and because the server's round modes may not import grpc:
the relay mode (server/modes/relay.py) is handed an `UpstreamLink` and sees only plain values from it.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Mapping

import grpc
import torch

from fedstream.client.connection import (LOST_SERVER, POLL_TIMEOUT_S, Backoff, CoordinatorStub, open_channel,
                                         with_retry)
from fedstream.client.transfer import TransferError, download, upload
from fedstream.common.proto import coordinator_pb2 as pb
from fedstream.common.wire.protocol import LONG_POLL_MS, PROTOCOL_VERSION

log = logging.getLogger("fedstream.relay")
RELAY_CAPABILITY = "relay"
RELAY_FAILED = "relay-failed"  # the Exchange phase a relay uses to say it sends nothing this round
UPLOAD_ATTEMPTS = 4
UPLOAD_RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED}
KINDS = {pb.Task.WAIT: "wait", pb.Task.TRAIN: "train", pb.Task.EVALUATE: "evaluate", pb.Task.FINISH: "finish",
         pb.Task.EXCHANGE: "exchange"}


@dataclass
class UpstreamTask:
    """One answer of the upstream's GetTask, as plain values."""

    kind: str
    round: int = 0
    version: int = 0
    config: dict[str, Any] = field(default_factory=dict)
    message: str = ""


class UpstreamRefused(Exception):
    """The upstream refused a call for good (not a network failure): the message carries its status and words."""


class UpstreamLink:
    def __init__(self, address: str, client_id: str, credentials: grpc.ChannelCredentials | None = None,
                 server_name: str | None = None, connect_timeout: float = 600.0, chunk_delay: float = 0.0) -> None:
        self.address = address
        self.client_id = client_id
        self.connect_timeout = connect_timeout
        self.chunk_delay = chunk_delay
        self.channel = open_channel(address, credentials, server_name)
        self.stub = CoordinatorStub(self.channel)
        self.session: pb.JoinReply | None = None
        self.finished = threading.Event()  # the upstream said the run is over
        self.finish_message = ""
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        self.bytes_down = 0
        self.bytes_up = 0

    # ----- session ------------------------------------------------------------------------------------------

    def join(self) -> None:
        """Joins as a relay (raw uploads only, so partial sums stay exact; no examples of its own until it
        uploads) and starts the heartbeats that keep the session alive through long local rounds."""
        request = pb.JoinRequest(client_id=self.client_id, protocol_version=PROTOCOL_VERSION, device="relay",
                                 codecs=["raw"], num_examples=0, capabilities=[RELAY_CAPABILITY])
        try:
            self.session = with_retry(lambda: self.stub.Join(request, timeout=10),
                                      f"relay {self.client_id} joining {self.address}", self.connect_timeout)
        except grpc.RpcError as exc:
            raise UpstreamRefused(f"upstream {self.address} refused relay {self.client_id}: "
                                  f"{_code(exc)}: {exc.details()}") from None
        log.info("relay=%s joined upstream %s (run %s)", self.client_id, self.address, self.session.run_id)
        if self._beat is None:
            self._beat = threading.Thread(target=self._heartbeats, name="upstream-heartbeat", daemon=True)
            self._beat.start()

    def _heartbeats(self) -> None:
        while not self._stop.wait(self.session.heartbeat_seconds if self.session else 5):
            try:
                reply = self.stub.Heartbeat(pb.HeartbeatRequest(session_id=self.session.session_id), timeout=5)
            except grpc.RpcError:
                continue
            if reply.finished:
                self.finish_message = reply.finish_message
                self.finished.set()

    def current_version(self) -> int:
        """The version the upstream serves now (a restarted relay starts serving it at once)."""
        return int(self._call(lambda s: self.stub.Heartbeat(pb.HeartbeatRequest(session_id=s), timeout=10)).version)

    def next_task(self) -> UpstreamTask:
        """Long-polls the upstream; network failures and lost sessions are retried here, never returned."""
        task = self._call(lambda s: self.stub.GetTask(pb.TaskRequest(session_id=s, wait_ms=LONG_POLL_MS),
                                                      timeout=POLL_TIMEOUT_S))
        config = {"local_epochs": task.config.local_epochs, "batch_size": task.config.batch_size,
                  "learning_rate": task.config.learning_rate, "proximal_mu": task.config.proximal_mu,
                  "clip_norm": task.config.clip_norm, "noise_multiplier": task.config.noise_multiplier,
                  "options": dict(task.config.options)}
        if task.kind == pb.Task.FINISH:
            self.finish_message = task.message
            self.finished.set()
        return UpstreamTask(KINDS.get(task.kind, "wait"), int(task.round), int(task.version), config, task.message)

    def download(self, version: int) -> tuple["OrderedDict[str, torch.Tensor]", list[str]]:
        """The whole version (never a difference: the relay serves it to clients holding any version) and its
        pruned tensors' names."""
        for attempt in range(UPLOAD_ATTEMPTS):
            try:
                got = self._call(lambda s: download(self.stub, s, version, have_version=0, timeout=None))
                break
            except TransferError as exc:
                if attempt == UPLOAD_ATTEMPTS - 1:
                    raise UpstreamRefused(f"download of version {version} from {self.address} failed "
                                          f"{UPLOAD_ATTEMPTS} times: {exc}") from None
                log.warning("relay=%s download of version %d failed (%s); retrying", self.client_id, version, exc)
        self.bytes_down += got.nbytes
        state = OrderedDict((k, v.clone()) for k, v in got.state.items())  # off the download buffer
        return state, list(got.masked)

    def upload(self, round_number: int, version: int, mean: Mapping[str, torch.Tensor], num_examples: int,
               aggregated_clients: int, metrics: Mapping[str, float]) -> int:
        """Streams the partial sum's mean; returns the bytes sent. A retry after a lost reply reuses the
        upload id, so the upstream counts it once. Raises UpstreamRefused when the upstream refuses it."""
        upload_id = uuid.uuid4().hex
        for attempt in range(UPLOAD_ATTEMPTS):
            session = self.session
            try:
                _reply, nbytes = upload(self.stub, session.session_id, round_number, version, mean, num_examples,
                                        metrics, "raw", session.chunk_bytes, upload_id=upload_id,
                                        chunk_delay=self.chunk_delay, admission=session.upload_admission,
                                        aggregated_clients=aggregated_clients)
                self.bytes_up += nbytes
                return nbytes
            except grpc.RpcError as exc:
                if exc.code() not in UPLOAD_RETRYABLE or attempt == UPLOAD_ATTEMPTS - 1:
                    raise UpstreamRefused(f"upstream refused relay {self.client_id}'s round {round_number} "
                                          f"update: {_code(exc)}: {exc.details()}") from None
                time.sleep(0.5 * 2 ** attempt)
        raise AssertionError("unreachable")

    def report_failure(self, round_number: int, reason: str) -> None:
        """Tells the upstream this relay sends nothing for the round, so the round need not wait for it."""
        try:
            self._call(lambda s: self.stub.Exchange(pb.ExchangeRequest(session_id=s, round=round_number,
                                                                       phase=RELAY_FAILED,
                                                                       payload=reason.encode()[:200]), timeout=10))
        except UpstreamRefused as exc:
            log.warning("relay=%s could not report round %d failed: %s", self.client_id, round_number, exc)

    def leave(self, reason: str) -> None:
        """Ends the session (best effort) and stops the heartbeats."""
        self._stop.set()
        if self.session is not None:
            try:
                self.stub.Leave(pb.LeaveRequest(session_id=self.session.session_id, reason=reason), timeout=5)
            except grpc.RpcError:
                pass
        self.channel.close()

    # ----- retries ------------------------------------------------------------------------------------------

    def _call(self, fn):
        """fn(session_id), retried while the upstream is unreachable or the session was lost (joins again);
        a refusal raises UpstreamRefused."""
        backoff = Backoff()
        deadline = time.monotonic() + self.connect_timeout
        while True:
            try:
                return fn(self.session.session_id)
            except grpc.RpcError as exc:
                code = exc.code() if hasattr(exc, "code") else None
                if code == grpc.StatusCode.UNAUTHENTICATED:
                    log.info("relay=%s upstream session lost (%s); joining again", self.client_id, exc.details())
                    self.join()
                    continue
                if code not in LOST_SERVER or time.monotonic() > deadline or self._stop.is_set():
                    raise UpstreamRefused(f"upstream {self.address}: {_code(exc)}: {exc.details()}") from None
                delay = backoff.next_delay()
                log.info("relay=%s lost upstream %s (%s); retrying in %.1f s", self.client_id, self.address,
                         _code(exc), delay)
                time.sleep(delay)


def _code(exc: grpc.RpcError) -> str:
    code = exc.code() if hasattr(exc, "code") else None
    return code.name if code is not None else type(exc).__name__
