"""The client's channel to the coordinator: stubs with zero-copy chunk framing, and retry with backoff."""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

import grpc

from fedstream.client.handshake import HandshakeFailed
from fedstream.common.wire.channel import GRPC_OPTIONS
from fedstream.common.proto import coordinator_pb2 as pb
from fedstream.common.wire.framing import deserializer, serializer
from fedstream.common.wire.protocol import LONG_POLL_MS

SERVICE = "/fedstream.v1.Coordinator/"
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
# A call that failed with one of these lost the server (it went away, cut the stream, or cancelled the call
# because it was too busy to take it): the client backs off and tries again.
LOST_SERVER = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED,
                         grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL})
POLL_TIMEOUT_S = LONG_POLL_MS / 1000 + 10  # a task poll's call deadline: the server holds it at most LONG_POLL_MS
log = logging.getLogger("fedstream.client")
T = TypeVar("T")


class CoordinatorStub:
    def __init__(self, channel: grpc.Channel) -> None:
        self.Join = channel.unary_unary(SERVICE + "Join", pb.JoinRequest.SerializeToString, pb.JoinReply.FromString)
        self.GetTask = channel.unary_unary(SERVICE + "GetTask", pb.TaskRequest.SerializeToString, pb.Task.FromString)
        self.Heartbeat = channel.unary_unary(SERVICE + "Heartbeat", pb.HeartbeatRequest.SerializeToString,
                                             pb.HeartbeatReply.FromString)
        self.Leave = channel.unary_unary(SERVICE + "Leave", pb.LeaveRequest.SerializeToString, pb.LeaveReply.FromString)
        self.ReportEvaluation = channel.unary_unary(SERVICE + "ReportEvaluation", pb.EvaluationReport.SerializeToString,
                                                    pb.EvaluationReply.FromString)
        self.Exchange = channel.unary_unary(SERVICE + "Exchange", pb.ExchangeRequest.SerializeToString,
                                            pb.ExchangeReply.FromString)
        self.DownloadModel = channel.unary_stream(SERVICE + "DownloadModel", pb.DownloadRequest.SerializeToString,
                                                  deserializer(pb.ModelChunk))
        self.UploadUpdate = channel.stream_unary(SERVICE + "UploadUpdate", serializer, pb.UploadReply.FromString)
        self.Exchange = channel.unary_unary(SERVICE + "Exchange", pb.ExchangeRequest.SerializeToString,
                                            pb.ExchangeReply.FromString)


def open_channel(target: str, credentials: grpc.ChannelCredentials | None = None,
                 server_name: str | None = None) -> grpc.Channel:
    options = list(GRPC_OPTIONS)
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    if credentials is None:
        return grpc.insecure_channel(target, options=options)
    return grpc.secure_channel(target, credentials, options=options)


@dataclass
class Backoff:
    """Exponential backoff with full jitter: 0.5 s, 1 s, 2 s, … capped at `cap` seconds."""

    base: float = 0.5
    cap: float = 10.0
    attempt: int = 0

    def next_delay(self) -> float:
        delay = min(self.cap, self.base * (2 ** self.attempt))
        self.attempt += 1
        return random.uniform(delay / 2, delay)

    def reset(self) -> None:
        self.attempt = 0


@dataclass
class WaitPacer:
    """How long a client waits after a WAIT before it asks again.

    What the server asks for (a tenth of retry_after_ms, at most 0.1 s: the next GetTask long-polls anyway), but
    never less than a floor of 50 ms, and a floor that doubles (jittered, up to `cap`) for each WAIT in a row that
    came back before half the requested long poll had passed: a server answering WAIT at once cannot make the
    client spin.
    """

    floor: float = 0.05
    cap: float = 2.0
    quick: int = 0

    def delay(self, retry_after_ms: int, held_s: float, asked_s: float) -> float:
        self.quick = self.quick + 1 if held_s < asked_s / 2 else 0
        floor = min(self.cap, self.floor * 2 ** self.quick)
        return max(min(retry_after_ms, 1000) / 1000 * 0.1, random.uniform(floor / 2, floor) if self.quick else floor)

    def reset(self) -> None:
        self.quick = 0


def with_retry(fn: Callable[[], T], what: str, give_up_after: float, sleep: Callable[[float], None] = time.sleep,
               diagnose: Callable[[str], str | None] | None = None) -> T:
    """Calls fn until it succeeds or fails with a non-retryable status; waits with backoff in between.

    diagnose reads an UNAVAILABLE's details: a message from it means retrying cannot help (a TLS handshake that
    fails on a certificate), and HandshakeFailed carries that message at once.
    """
    backoff = Backoff()
    deadline = time.monotonic() + give_up_after
    while True:
        try:
            return fn()
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            problem = diagnose(exc.details() or "") if diagnose and code == grpc.StatusCode.UNAVAILABLE else None
            if problem:
                raise HandshakeFailed(problem) from exc
            if code not in RETRYABLE or time.monotonic() >= deadline:
                raise
            delay = backoff.next_delay()
            if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                log.info("%s: the server is busy (%s); retrying in %.1f s", what, exc.details(), delay)
            else:
                log.info("%s: server not reachable (%s); retrying in %.1f s", what, code.name if code else exc, delay)
            sleep(delay)
