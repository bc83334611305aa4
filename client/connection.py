"""The client's channel to the coordinator: stubs with zero-copy chunk framing, and retry with backoff."""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

import grpc

from fedstream.common.wire.channel import GRPC_OPTIONS
from fedstream.common.proto import coordinator_pb2 as pb
from fedstream.common.wire.framing import deserializer, serializer

SERVICE = "/fedstream.v1.Coordinator/"
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
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


def with_retry(fn: Callable[[], T], what: str, give_up_after: float, sleep: Callable[[float], None] = time.sleep) -> T:
    """Calls fn until it succeeds or fails with a non-retryable status; waits with backoff in between."""
    backoff = Backoff()
    deadline = time.monotonic() + give_up_after
    while True:
        try:
            return fn()
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            if code not in RETRYABLE or time.monotonic() >= deadline:
                raise
            delay = backoff.next_delay()
            if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                log.info("%s: the server is busy (%s); retrying in %.1f s", what, exc.details(), delay)
            else:
                log.info("%s: server not reachable (%s); retrying in %.1f s", what, code.name if code else exc, delay)
            sleep(delay)
