"""The gRPC face of the coordinator: translates messages to coordinator calls and refusals to statuses."""

from __future__ import annotations

import logging
from typing import Iterator

import grpc

from fedstream.common.proto import coordinator_pb2 as pb
from fedstream.common.wire import DataChunk, deserializer, serializer
from fedstream.server.coordinator import Coordinator, Duplicate
from fedstream.server.errors import Refusal, invalid

SERVICE = "fedstream.v1.Coordinator"
log = logging.getLogger("fedstream.server")


class CoordinatorServicer:
    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator

    def Join(self, request: pb.JoinRequest, context: grpc.ServicerContext) -> pb.JoinReply:
        return _call(context, lambda: self.coordinator.join(request))

    def GetTask(self, request: pb.TaskRequest, context: grpc.ServicerContext) -> pb.Task:
        return _call(context, lambda: self.coordinator.next_task(request.session_id, request.wait_ms / 1000.0))

    def Heartbeat(self, request: pb.HeartbeatRequest, context: grpc.ServicerContext) -> pb.HeartbeatReply:
        return _call(context, lambda: self.coordinator.heartbeat(request.session_id))

    def Leave(self, request: pb.LeaveRequest, context: grpc.ServicerContext) -> pb.LeaveReply:
        self.coordinator.leave(request.session_id, request.reason)
        return pb.LeaveReply()

    def DownloadModel(self, request: pb.DownloadRequest, context: grpc.ServicerContext) -> Iterator[pb.ModelChunk | DataChunk]:
        stream = _call(context, lambda: self.coordinator.open_download(request.session_id, request.version,
                                                                       request.have_version))
        yield pb.ModelChunk(header=stream.header)
        for piece in stream.chunks:
            yield DataChunk(memoryview(piece))
        yield pb.ModelChunk(trailer=pb.Trailer(crc32=stream.crc.value, total_bytes=stream.crc.nbytes))

    def UploadUpdate(self, requests: Iterator[pb.UpdateChunk | DataChunk], context: grpc.ServicerContext) -> pb.UploadReply:
        first = next(requests, None)
        if not isinstance(first, pb.UpdateChunk) or first.WhichOneof("part") != "header":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "an upload must start with an UpdateHeader message")
        try:
            sink = self.coordinator.begin_upload(first.header)
        except Duplicate:
            return pb.UploadReply(accepted=True, duplicate=True, message="already accepted; counted once")
        except Refusal as refusal:
            context.abort(refusal.code, refusal.message)
        finished = False
        try:
            for message in requests:
                if isinstance(message, DataChunk):
                    sink.write(message.data)
                    continue
                part = message.WhichOneof("part")
                if part == "data":
                    sink.write(message.data)
                elif part == "trailer" and not finished:
                    finished = True
                    self.coordinator.finish_upload(sink, message.trailer)
                else:
                    raise invalid(f"unexpected {part or 'empty'} message in the middle of an upload")
            if not finished:
                raise invalid("the upload ended without a trailer; nothing was aggregated")
        except Refusal as refusal:
            if not finished:
                self.coordinator.abort_upload(sink, refusal.message)
            context.abort(refusal.code, refusal.message)
        except Exception as exc:  # the stream broke: client gone, connection reset, cancelled
            if not finished:
                self.coordinator.abort_upload(sink, f"upload stream broke ({type(exc).__name__})")
            raise
        return pb.UploadReply(accepted=True, message="update accepted")


def _call(context: grpc.ServicerContext, fn):
    try:
        return fn()
    except Refusal as refusal:
        context.abort(refusal.code, refusal.message)


def generic_handler(servicer: CoordinatorServicer) -> grpc.GenericRpcHandler:
    """Method handlers; the two model-carrying streams use the zero-copy chunk (de)serialisers."""
    handlers = {
        "Join": grpc.unary_unary_rpc_method_handler(
            servicer.Join, pb.JoinRequest.FromString, pb.JoinReply.SerializeToString),
        "GetTask": grpc.unary_unary_rpc_method_handler(
            servicer.GetTask, pb.TaskRequest.FromString, pb.Task.SerializeToString),
        "Heartbeat": grpc.unary_unary_rpc_method_handler(
            servicer.Heartbeat, pb.HeartbeatRequest.FromString, pb.HeartbeatReply.SerializeToString),
        "Leave": grpc.unary_unary_rpc_method_handler(
            servicer.Leave, pb.LeaveRequest.FromString, pb.LeaveReply.SerializeToString),
        "DownloadModel": grpc.unary_stream_rpc_method_handler(
            servicer.DownloadModel, pb.DownloadRequest.FromString, serializer),
        "UploadUpdate": grpc.stream_unary_rpc_method_handler(
            servicer.UploadUpdate, deserializer(pb.UpdateChunk), pb.UploadReply.SerializeToString),
    }
    return grpc.method_handlers_generic_handler(SERVICE, handlers)
