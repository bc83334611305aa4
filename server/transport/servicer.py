"""The gRPC face of the coordinator: translates messages to coordinator calls and refusals to statuses."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Iterator

import grpc

from fedstream.common.proto import coordinator_pb2 as pb
from fedstream.common.wire.protocol import UPLOAD_ADMITTED_KEY
from fedstream.common.wire.framing import DataChunk, deserializer, serializer
from fedstream.server.transport.auth import Authenticator
from fedstream.server.core.coordinator import Coordinator, Duplicate, UploadSink
from fedstream.server.core.errors import Refusal, exhausted, invalid
from fedstream.server.core.join_limit import peer_host

SERVICE = "fedstream.v1.Coordinator"
log = logging.getLogger("fedstream.server")


class CoordinatorServicer:
    def __init__(self, coordinator: Coordinator, auth: Authenticator | None = None) -> None:
        self.coordinator = coordinator
        self.auth = auth or Authenticator()

    def _bound(self, context: grpc.ServicerContext, session_id: str) -> None:
        """With mTLS, a session may only be used over a connection whose certificate names its client."""
        if self.auth.require_certificate:
            self.auth.check_peer(context, self.coordinator.client_of(session_id))

    def Join(self, request: pb.JoinRequest, context: grpc.ServicerContext) -> pb.JoinReply:
        def join() -> pb.JoinReply:
            limit, host = self.coordinator.join_limit, peer_host(context.peer())
            wait = limit.wait_seconds(host)
            if wait:
                raise exhausted(f"too many joins from {host}: at most {limit.rate:g} per second after a burst of "
                                f"{limit.burst}; retry in {max(wait, 0.1):.1f} s (the server's --join-rate and "
                                "--join-burst)")
            self.auth.check_join(context, request.client_id, request.token)
            return self.coordinator.join(request)

        return _call(context, join)

    def GetTask(self, request: pb.TaskRequest, context: grpc.ServicerContext) -> pb.Task:
        def task() -> pb.Task:
            self._bound(context, request.session_id)
            return self.coordinator.next_task(request.session_id, request.wait_ms / 1000.0)

        return _call(context, task)

    def Heartbeat(self, request: pb.HeartbeatRequest, context: grpc.ServicerContext) -> pb.HeartbeatReply:
        def beat() -> pb.HeartbeatReply:
            self._bound(context, request.session_id)
            return self.coordinator.heartbeat(request.session_id)

        return _call(context, beat)

    def Leave(self, request: pb.LeaveRequest, context: grpc.ServicerContext) -> pb.LeaveReply:
        def leave() -> pb.LeaveReply:
            self._bound(context, request.session_id)
            self.coordinator.leave(request.session_id, request.reason[:200])
            return pb.LeaveReply()

        return _call(context, leave)

    def ReportEvaluation(self, request: pb.EvaluationReport, context: grpc.ServicerContext) -> pb.EvaluationReply:
        def report() -> pb.EvaluationReply:
            self._bound(context, request.session_id)
            self.coordinator.report_evaluation(request)
            return pb.EvaluationReply(accepted=True)

        return _call(context, report)

    def DownloadModel(self, request: pb.DownloadRequest, context: grpc.ServicerContext) -> Iterator[pb.ModelChunk | DataChunk]:
        def open_download():
            self._bound(context, request.session_id)
            return self.coordinator.open_download(request.session_id, request.version, request.have_version)

        stream = _call(context, open_download)
        yield pb.ModelChunk(header=stream.header)
        with self.coordinator.transfers.slot(lambda: not context.is_active()) as transfer:
            if transfer is None:
                return
            for piece in stream.chunks:
                yield DataChunk(memoryview(piece))
                transfer.progress()
        yield pb.ModelChunk(trailer=pb.Trailer(crc32=stream.crc.value, total_bytes=stream.crc.nbytes))

    def UploadUpdate(self, requests: Iterator[pb.UpdateChunk | DataChunk], context: grpc.ServicerContext) -> pb.UploadReply:
        first = next(requests, None)
        if not isinstance(first, pb.UpdateChunk) or first.WhichOneof("part") != "header":
            what = first.error if isinstance(first, Malformed) else type(first).__name__
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"an upload must start with an UpdateHeader message; got {what}")
        try:
            self._bound(context, first.header.session_id)
            sink = self.coordinator.begin_upload(first.header)
        except Duplicate:
            return pb.UploadReply(accepted=True, duplicate=True, message="already accepted; counted once")
        except Refusal as refusal:
            context.abort(refusal.code, refusal.message)
        finished = False
        try:
            trailer = self._receive(sink, requests, context)
            if trailer is None:
                raise invalid(f"client {sink.client_id}'s upload ended without a trailer (the stream closed early: "
                              "the client went away or stopped sending); nothing was aggregated")
            finished = True
            self.coordinator.finish_upload(sink, trailer)
        except Refusal as refusal:
            if not finished:
                self.coordinator.abort_upload(sink, refusal.message)
            context.abort(refusal.code, refusal.message)
        except Exception as exc:  # the stream broke: client gone, connection reset, cancelled
            if not finished:
                self.coordinator.abort_upload(sink, f"upload stream broke ({type(exc).__name__})")
            raise
        return pb.UploadReply(accepted=True, message="update accepted")

    def _receive(self, sink: UploadSink, requests: Iterator[pb.UpdateChunk | DataChunk | Malformed],
                 context: grpc.ServicerContext) -> pb.Trailer | None:
        """Spools the upload's data once a transfer slot is free; returns its trailer (None: the stream ended early)."""
        trailer: pb.Trailer | None = None
        with self.coordinator.transfers.slot(lambda: not context.is_active()) as transfer:
            if transfer is None:
                return None
            context.send_initial_metadata(((UPLOAD_ADMITTED_KEY, "1"),))
            for message in requests:
                transfer.progress()
                if trailer is not None:
                    raise invalid(f"client {sink.client_id} sent data after the trailer; nothing was aggregated")
                if isinstance(message, DataChunk):
                    sink.write(message.data)
                    continue
                if isinstance(message, Malformed):
                    raise invalid(f"client {sink.client_id} sent an undecodable upload message ({message.error}); "
                                  "nothing was aggregated")
                part = message.WhichOneof("part")
                if part == "data":
                    sink.write(message.data)
                elif part == "trailer":
                    trailer = message.trailer
                else:
                    raise invalid(f"client {sink.client_id} sent {'a second header' if part else 'an empty message'} "
                                  "in the middle of an upload; nothing was aggregated")
        return trailer


def _call(context: grpc.ServicerContext, fn):
    try:
        return fn()
    except Refusal as refusal:
        context.abort(refusal.code, refusal.message)


@dataclass(frozen=True)
class Malformed:
    """A request whose bytes do not parse as the method's message (answered INVALID_ARGUMENT, not INTERNAL)."""

    error: str


def _lenient(parse: Callable[[bytes], object]) -> Callable[[bytes], object]:
    def parse_or_flag(raw: bytes) -> object:
        try:
            return parse(raw)
        except Exception as exc:  # protobuf's DecodeError, bad UTF-8 in a string field, ...
            return Malformed(f"{type(exc).__name__}: {str(exc)[:200]}")

    return parse_or_flag


def _checked(method: Callable) -> Callable:
    def handle(request: object, context: grpc.ServicerContext):
        if isinstance(request, Malformed):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"request is not a valid protobuf message ({request.error})")
        return method(request, context)

    return handle


def generic_handler(servicer: CoordinatorServicer) -> grpc.GenericRpcHandler:
    """Method handlers; the two model-carrying streams use the zero-copy chunk (de)serialisers."""
    handlers = {
        "Join": grpc.unary_unary_rpc_method_handler(
            _checked(servicer.Join), _lenient(pb.JoinRequest.FromString), pb.JoinReply.SerializeToString),
        "GetTask": grpc.unary_unary_rpc_method_handler(
            _checked(servicer.GetTask), _lenient(pb.TaskRequest.FromString), pb.Task.SerializeToString),
        "Heartbeat": grpc.unary_unary_rpc_method_handler(
            _checked(servicer.Heartbeat), _lenient(pb.HeartbeatRequest.FromString), pb.HeartbeatReply.SerializeToString),
        "Leave": grpc.unary_unary_rpc_method_handler(
            _checked(servicer.Leave), _lenient(pb.LeaveRequest.FromString), pb.LeaveReply.SerializeToString),
        "ReportEvaluation": grpc.unary_unary_rpc_method_handler(
            _checked(servicer.ReportEvaluation), _lenient(pb.EvaluationReport.FromString),
            pb.EvaluationReply.SerializeToString),
        "DownloadModel": grpc.unary_stream_rpc_method_handler(
            _checked(servicer.DownloadModel), _lenient(pb.DownloadRequest.FromString), serializer),
        "UploadUpdate": grpc.stream_unary_rpc_method_handler(
            servicer.UploadUpdate, _lenient(deserializer(pb.UpdateChunk)), pb.UploadReply.SerializeToString),
    }
    return grpc.method_handlers_generic_handler(SERVICE, handlers)
