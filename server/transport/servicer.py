"""The gRPC face of the coordinator on grpc.aio: translates messages to core calls and refusals to statuses.

Every handler runs on the event loop; a long poll, a heartbeat or an idle session holds no thread. Byte work
(opening a download, spooling a chunk, the final checks and the fold) goes to a bounded thread pool, so the loop
keeps answering while a large model is folded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Iterable

import grpc

from fedstream.common.proto import coordinator_pb2 as pb
from fedstream.common.wire.framing import DataChunk, deserializer, serializer
from fedstream.common.wire.protocol import SESSION_KEY, UPLOAD_ADMITTED_KEY
from fedstream.server.core import errors
from fedstream.server.core.coordinator import MAX_WAIT_SECONDS, Coordinator
from fedstream.server.core.join_limit import peer_host
from fedstream.server.core.messages import Assignment, TaskKind
from fedstream.server.intake.upload import UploadSink
from fedstream.server.transport import convert
from fedstream.server.transport.admission_queue import AdmissionQueue
from fedstream.server.transport.auth import Authenticator
from fedstream.server.transport.call_limits import CallLimits
from fedstream.server.transport.statuses import status_of

SERVICE = "fedstream.v1.Coordinator"
INLINE_BYTES = 4 << 20  # byte work this small (one chunk) runs on the loop: a hand-off to the pool costs more
log = logging.getLogger("fedstream.server")


class TaskWaiters:
    """Long polls asleep until the core says their client's work may have changed (any thread may wake them).

    Each sleeper is one future and one timer handle: no task, no event object, so 10,000 idle polls stay cheap."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._sleepers: dict[str, set[asyncio.Future]] = {}

    def wake(self, clients: Iterable[str] | None) -> None:
        """Thread-safe: schedules the wake-up on the loop."""
        chosen = None if clients is None else list(clients)
        try:
            self.loop.call_soon_threadsafe(self._wake_now, chosen)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass

    def _wake_now(self, clients: list[str] | None) -> None:
        groups = list(self._sleepers.values()) if clients is None else [self._sleepers.get(c, ()) for c in clients]
        for group in groups:
            for sleeper in list(group):
                if not sleeper.done():
                    sleeper.set_result(None)

    async def sleep(self, client: str, seconds: float) -> None:
        sleeper = self.loop.create_future()
        group = self._sleepers.setdefault(client, set())
        group.add(sleeper)
        timer = self.loop.call_later(seconds, _settle, sleeper)
        try:
            await sleeper
        finally:
            timer.cancel()
            group.discard(sleeper)
            if not group and self._sleepers.get(client) is group:
                del self._sleepers[client]


def _settle(sleeper: asyncio.Future) -> None:
    if not sleeper.done():
        sleeper.set_result(None)


class CoordinatorServicer:
    def __init__(self, coordinator: Coordinator, auth: Authenticator | None = None,
                 pool: ThreadPoolExecutor | None = None, limits: CallLimits | None = None) -> None:
        self.core = coordinator
        self.auth = auth or Authenticator()
        self.pool = pool or ThreadPoolExecutor(max_workers=8, thread_name_prefix="bytes")
        self.limits = limits or CallLimits()
        self.waiters: TaskWaiters | None = None
        self.admission = AdmissionQueue(coordinator.transfers, coordinator.config.chunk_bytes)

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Binds the long polls to the serving loop and lets the core wake them."""
        self.waiters = TaskWaiters(loop)
        self.core.wake = self.waiters.wake

    async def _offload(self, fn: Callable[..., Any], *args: Any, nbytes: int | None = None) -> Any:
        """fn(*args) in the byte pool; on the loop itself when it touches at most INLINE_BYTES (nbytes)."""
        if nbytes is not None and nbytes <= INLINE_BYTES:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def _bound(self, context: grpc.aio.ServicerContext, session_id: str) -> str:
        """The session's client; with mTLS, the connection's certificate must name it."""
        client = self.core.client_of(session_id)
        if self.auth.require_certificate:
            self.auth.check_peer(context, client)
        return client

    async def Join(self, request: pb.JoinRequest, context: grpc.aio.ServicerContext) -> pb.JoinReply:
        limit, host = self.core.join_limit, peer_host(context.peer())
        try:
            wait = limit.wait_seconds(host)
            if wait:
                raise errors.exhausted(f"too many joins from {host}: at most {limit.rate:g} per second after a burst "
                                       f"of {limit.burst}; retry in {max(wait, 0.1):.1f} s (the server's --join-rate "
                                       "and --join-burst)")
            self.auth.check_join(context, request.client_id, request.token)
            return convert.join_reply(self.core.join(request))
        except errors.Refusal as refusal:
            self.core.observer.refusal(refusal.code, refusal.message, None, rpc="Join")
            await _abort(context, refusal)

    async def GetTask(self, request: pb.TaskRequest, context: grpc.aio.ServicerContext) -> pb.Task:
        try:
            client = self._bound(context, request.session_id)
            deadline = time.monotonic() + min(request.wait_ms / 1000.0, MAX_WAIT_SECONDS)
            with self.limits.long_poll(request.session_id):
                while True:
                    task = self.core.task_now(request.session_id)
                    remaining = deadline - time.monotonic()
                    if task is not None or remaining <= 0 or self.waiters is None:
                        return convert.task(task or Assignment(TaskKind.WAIT, retry_after_ms=200))
                    await self.waiters.sleep(client, remaining)
        except errors.Refusal as refusal:
            await _abort(context, refusal)

    async def Heartbeat(self, request: pb.HeartbeatRequest, context: grpc.aio.ServicerContext) -> pb.HeartbeatReply:
        try:
            self._bound(context, request.session_id)
            return convert.beat(self.core.heartbeat(request.session_id))
        except errors.Refusal as refusal:
            await _abort(context, refusal)

    async def Leave(self, request: pb.LeaveRequest, context: grpc.aio.ServicerContext) -> pb.LeaveReply:
        try:
            self._bound(context, request.session_id)
            self.core.leave(request.session_id, request.reason[:200])
            return pb.LeaveReply()
        except errors.Refusal as refusal:
            await _abort(context, refusal)

    async def ReportEvaluation(self, request: pb.EvaluationReport,
                               context: grpc.aio.ServicerContext) -> pb.EvaluationReply:
        try:
            self._bound(context, request.session_id)
            self.core.report_evaluation(request)
            return pb.EvaluationReply(accepted=True)
        except errors.Refusal as refusal:
            await _abort(context, refusal)

    async def Exchange(self, request: pb.ExchangeRequest, context: grpc.aio.ServicerContext) -> pb.ExchangeReply:
        try:
            self._bound(context, request.session_id)
            payload = await self._offload(self.core.exchange, request.session_id, request.round, request.phase[:64],
                                          request.payload)
            return pb.ExchangeReply(payload=payload)
        except errors.Refusal as refusal:
            self.core.observer.refusal(refusal.code, refusal.message, None, rpc="Exchange")
            await _abort(context, refusal)

    async def DownloadModel(self, request: pb.DownloadRequest, context: grpc.aio.ServicerContext) -> None:
        try:
            self._bound(context, request.session_id)
            small = self.core.model_bytes if self.core.publisher.cheap_to_serve() else None
            stream = await self._offload(self.core.open_download, request.session_id, request.version,
                                         request.have_version, nbytes=small)
        except errors.Refusal as refusal:
            await _abort(context, refusal)
        await context.write(pb.ModelChunk(header=convert.model_header(stream.header)))
        transfer = await self.admission.acquire(int(stream.header.manifest.total_bytes))
        try:
            while True:
                piece = await self._offload(next, stream.chunks, None, nbytes=self.core.config.chunk_bytes)
                if piece is None:
                    break
                await self._write(context, DataChunk(memoryview(piece)))
                transfer.progress()
        finally:
            self.admission.release(transfer)
        await context.write(pb.ModelChunk(trailer=pb.Trailer(crc32=stream.crc.value, total_bytes=stream.crc.nbytes)))

    async def _write(self, context: grpc.aio.ServicerContext, message: Any) -> None:
        """One response message; a reader that does not take it within chunk_seconds is dropped."""
        try:
            await asyncio.wait_for(context.write(message), self.limits.chunk_seconds)
        except asyncio.TimeoutError:
            await _abort(context, errors.deadline(
                f"the download was not read for {self.limits.chunk_seconds:g} s; the server dropped it"))

    async def UploadUpdate(self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> pb.UploadReply:
        incoming = requests.__aiter__()
        try:
            with self._until_identified(context):
                first = await asyncio.wait_for(_next(incoming), self.limits.header_seconds)
                if not isinstance(first, pb.UpdateChunk) or first.WhichOneof("part") != "header":
                    what = first.error if isinstance(first, Malformed) else type(first).__name__
                    raise errors.invalid(f"an upload must start with an UpdateHeader message; got {what}")
                self._bound(context, first.header.session_id)
                sink = self.core.begin_upload(first.header)
        except asyncio.TimeoutError:
            await _abort(context, errors.deadline(f"no upload header within {self.limits.header_seconds:g} s"))
        except errors.Duplicate:
            return pb.UploadReply(accepted=True, duplicate=True, message="already accepted; counted once")
        except errors.Refusal as refusal:
            self.core.observer.refusal(refusal.code, refusal.message, None)
            await _abort(context, refusal)
        finished = False
        try:
            trailer = await self._receive(sink, incoming, context)
            if trailer is None:
                raise errors.invalid(f"client {sink.client_id}'s upload ended without a trailer (the stream closed "
                                     "early: the client went away or stopped sending); nothing was aggregated")
            finished = True
            await self._offload(self.core.finish_upload, sink, trailer,
                                nbytes=None if self.core.mode.accept_waits else sink.writer.total_bytes)
        except errors.Refusal as refusal:
            if not finished:
                await self._offload(self.core.abort_upload, sink, refusal.message)
            await _abort(context, refusal)
        except BaseException as exc:  # the stream broke: client gone, connection reset, cancelled
            if not finished:
                await asyncio.shield(self._offload(self.core.abort_upload, sink,
                                                   f"upload stream broke ({type(exc).__name__})"))
            raise
        return pb.UploadReply(accepted=True, message="update accepted")

    def _until_identified(self, context: grpc.aio.ServicerContext):
        """An upload whose metadata names a live session is a member's; any other counts as a stranger's call
        (bounded per host and in all) until its header is checked."""
        session = dict(context.invocation_metadata() or ()).get(SESSION_KEY, "")
        if session and self.core.has_session(session):
            return contextlib.nullcontext()
        return self.limits.unauthenticated(peer_host(context.peer()))

    async def _receive(self, sink: UploadSink, incoming: AsyncIterator[Any],
                       context: grpc.aio.ServicerContext) -> pb.Trailer | None:
        """Spools the upload's data once a transfer slot is free; returns its trailer (None: the stream ended early)."""
        trailer: pb.Trailer | None = None
        transfer = await self.admission.acquire(sink.writer.total_bytes)
        try:
            await context.send_initial_metadata(((UPLOAD_ADMITTED_KEY, "1"),))
            async for message in incoming:
                transfer.progress()
                if trailer is not None:
                    raise errors.invalid(f"client {sink.client_id} sent data after the trailer; nothing was aggregated")
                if isinstance(message, DataChunk):
                    await self._offload(sink.write, message.data, nbytes=len(message.data))
                    continue
                if isinstance(message, Malformed):
                    raise errors.invalid(f"client {sink.client_id} sent an undecodable upload message "
                                         f"({message.error}); nothing was aggregated")
                part = message.WhichOneof("part")
                if part == "data":
                    await self._offload(sink.write, message.data, nbytes=len(message.data))
                elif part == "trailer":
                    trailer = message.trailer
                else:
                    raise errors.invalid(f"client {sink.client_id} sent {'a second header' if part else 'an empty message'} "
                                         "in the middle of an upload; nothing was aggregated")
        finally:
            self.admission.release(transfer)
        return trailer


async def _next(incoming: AsyncIterator[Any]) -> Any:
    try:
        return await incoming.__anext__()
    except StopAsyncIteration:
        return None


async def _abort(context: grpc.aio.ServicerContext, refusal: errors.Refusal) -> None:
    await context.abort(status_of(refusal.code), refusal.message)


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
    async def handle(request: object, context: grpc.aio.ServicerContext):
        if isinstance(request, Malformed):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"request is not a valid protobuf message ({request.error})")
        return await method(request, context)

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
        "Exchange": grpc.unary_unary_rpc_method_handler(
            _checked(servicer.Exchange), _lenient(pb.ExchangeRequest.FromString), pb.ExchangeReply.SerializeToString),
        "DownloadModel": grpc.unary_stream_rpc_method_handler(
            _checked(servicer.DownloadModel), _lenient(pb.DownloadRequest.FromString), serializer),
        "UploadUpdate": grpc.stream_unary_rpc_method_handler(
            servicer.UploadUpdate, _lenient(deserializer(pb.UpdateChunk)), pb.UploadReply.SerializeToString),
    }
    return grpc.method_handlers_generic_handler(SERVICE, handlers)
