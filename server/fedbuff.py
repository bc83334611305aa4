"""Asynchronous mode (FedBuff, Nguyen et al. 2022, https://arxiv.org/abs/2106.06639).

Clients never wait for a round: an idle client asking for work gets a TRAIN task on the current global version.
Each arriving update is folded into one running buffer (the same O(model) StreamingAggregator as sync rounds);
every K updates the buffer becomes a new global version:

    x_{v+1} = x_v + Σ nᵢ·f(sᵢ)·Δᵢ / Σ nᵢ,   sᵢ = v − (version update i was trained on)

so a stale update shrinks instead of merely losing share, and with no staleness this is FedAvg. Updates staler
than --max-staleness are refused (FAILED_PRECONDITION) before their bytes are sent. Task.round carries a task
number (one per TRAIN assignment) so an upload names the work it answers; metrics use round = version.

Published versions are never modified: the new model is built in the buffer's accumulator, and the current and
previous versions stay downloadable, so a client told to train on a version that was just replaced still gets it.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from fedstream.common.manifest import ManifestError, check_manifest, encode_state
from fedstream.common.proto import coordinator_pb2 as pb
from fedstream.common.wire import Crc32, iter_chunks
from fedstream.server import errors
from fedstream.server.aggregator import StreamingAggregator
from fedstream.server.checkpoint import Checkpoint, save_checkpoint
from fedstream.server.coordinator import (Coordinator, DownloadStream, Duplicate, ServerConfig, UploadSink,
                                          _check_update_fields, check_finite, client_privacy, describe,
                                          mean_train_loss, seed_round)
from fedstream.server.sessions import UnknownSession
from fedstream.server.spool import SpoolWriter, SpooledUpdate, UpdateInfo
from fedstream.server.staleness import InverseSqrt, Staleness, make_staleness
from fedstream.server.strategies import RoundUpdates, Strategy

log = logging.getLogger("fedstream.server")
SERVED_VERSIONS = 2
REMEMBERED_UPLOADS = 4096


@dataclass
class AsyncSettings:
    """FedBuff knobs: K updates per version, the staleness discount, and the staleness bound."""

    buffer_size: int = 10
    staleness: Staleness = field(default_factory=InverseSqrt)
    max_staleness: int = 10

    def __post_init__(self) -> None:
        if self.buffer_size < 1:
            raise ValueError(f"--buffer-size must be >= 1, got {self.buffer_size}")
        if self.max_staleness < 0:
            raise ValueError(f"--max-staleness must be >= 0, got {self.max_staleness}")

    @classmethod
    def from_flags(cls, buffer_size: int, staleness: str, exponent: float, max_staleness: int) -> "AsyncSettings":
        return cls(buffer_size, make_staleness(staleness, exponent), max_staleness)


@dataclass
class Ticket:
    """One TRAIN assignment: its number (sent as Task.round), the version it starts from, and its client."""

    number: int
    version: int
    client_id: str


@dataclass
class Buffer:
    """The updates folded toward the next version. `reserved` counts folds begun, `updates` folds done."""

    aggregator: StreamingAggregator
    started: float = field(default_factory=time.monotonic)
    reserved: int = 0
    sealed: bool = False
    updates: list[SpooledUpdate] = field(default_factory=list)
    staleness: list[int] = field(default_factory=list)
    bytes_up: int = 0
    bytes_down: int = 0
    refused: int = 0

    def has_room(self, capacity: int) -> bool:
        return not self.sealed and self.reserved < capacity

    def settled(self) -> bool:
        return self.reserved == len(self.updates)


class AsyncCoordinator(Coordinator):
    """The Coordinator with FedBuff's task assignment, upload admission and publishing loop."""

    def __init__(self, task, strategy: Strategy, config: ServerConfig,
                 on_round: Callable[[dict], None] | None = None, settings: AsyncSettings | None = None) -> None:
        if not strategy.streaming:
            raise ValueError(f"strategy {strategy.name} reads every update of a round at once; async mode folds "
                             "updates as they arrive and needs a streaming strategy (e.g. fedavg)")
        self.settings = settings or AsyncSettings()
        self.tasks_issued = 0
        self.started = False
        super().__init__(task, strategy, config, on_round)
        self.tickets: dict[str, Ticket] = {}
        self.uploading: dict[str, str] = {}
        self.accepted_uploads: OrderedDict[str, None] = OrderedDict()
        self.served: OrderedDict[int, OrderedDict[str, torch.Tensor]] = OrderedDict({self.version: self.global_state})
        self.buffer = Buffer(StreamingAggregator(self.global_state))

    def _restore(self, checkpoint: Checkpoint) -> None:
        super()._restore(checkpoint)
        self.tasks_issued = int((checkpoint.extra or {}).get("tasks_issued", 0))

    # ----- tasks and downloads ----------------------------------------------------------------------------------

    def _task_for(self, client_id: str) -> pb.Task | None:
        """A client asking for work is idle: it gets a fresh task on the current version (any older one lapses).
        No work is handed out before --min-clients have joined."""
        if self.finished:
            return pb.Task(kind=pb.Task.FINISH, message=self.finish_message())
        if not self.started:
            return None
        reason = self.strategy.begin_task(client_id)
        if reason:
            log.warning("no task for client %s: %s; the run ends", client_id, reason)
            self.strategy_stop = reason
            self.finished = True
            self.cond.notify_all()
            return pb.Task(kind=pb.Task.FINISH, message=reason)
        self.tasks_issued += 1
        ticket = Ticket(self.tasks_issued, self.version, client_id)
        self.tickets[client_id] = ticket
        return pb.Task(kind=pb.Task.TRAIN, round=ticket.number, version=ticket.version,
                       config=self._train_config(ticket, client_id))

    def open_download(self, session_id: str, version: int, have_version: int = 0) -> DownloadStream:
        with self.cond:
            session = self._session(session_id)
            state = self.served.get(version)
            if state is None:
                kept = ", ".join(str(v) for v in self.served)
                raise errors.stale(f"version {version} is no longer served (the server keeps versions {kept}); "
                                   f"the current version is {self.version}: ask for a new task")
            key = (version, self.config.download_codec)
            if key not in self._encoded:
                self._encoded[key] = encode_state(state, self.config.download_codec)
            manifest, buffers = self._encoded[key]
            session.held_version = version
        header = pb.ModelHeader(version=version, manifest=manifest)
        crc = Crc32()

        def chunks() -> Iterator[memoryview | bytes]:
            for piece in iter_chunks(buffers, self.config.chunk_bytes):
                crc.update(piece)
                yield piece
            with self.cond:
                self.buffer.bytes_down += crc.nbytes

        return DownloadStream(header, chunks(), crc)

    # ----- uploads ---------------------------------------------------------------------------------------------

    def _admit(self, client: str, base_version: int) -> int:
        """The update's staleness, or a FAILED_PRECONDITION refusal when it exceeds --max-staleness."""
        staleness = self.version - base_version
        if staleness > self.settings.max_staleness:
            ticket = self.tickets.get(client)
            if ticket is not None and ticket.version == base_version:
                del self.tickets[client]
            self.buffer.refused += 1
            raise errors.stale(
                f"client {client} trained on version {base_version}, {staleness} versions behind the current version "
                f"{self.version}; this server accepts updates at most {self.settings.max_staleness} versions old "
                "(--max-staleness): ask for a new task")
        return staleness

    def begin_upload(self, header: pb.UpdateHeader) -> UploadSink:
        with self.cond:
            session = self._session(header.session_id)
            client = session.client_id
            if header.upload_id and header.upload_id in self.accepted_uploads:
                raise Duplicate()
            if self.finished:
                raise errors.stale(f"the run is over; client {client}'s update for task {header.round} is not needed")
            ticket = self.tickets.get(client)
            if ticket is None or ticket.number != header.round:
                holds = f"its current task is {ticket.number}" if ticket else "it holds no task"
                raise errors.stale(f"client {client} sent an update for task {header.round}; {holds}: "
                                   "ask for a new task")
            if header.base_version != ticket.version:
                raise errors.invalid(f"client {client} sent base_version {header.base_version} for task "
                                     f"{ticket.number}, which starts from version {ticket.version}")
            self._admit(client, ticket.version)
            if client in self.uploading:
                raise errors.aborted(f"client {client} already has an upload in flight")
            _check_update_fields(client, header, session.num_examples)
            try:
                layout = check_manifest(header.manifest, self.reference, {session.upload_codec, "raw"},
                                        f"client {client}", self.max_update_bytes)
            except ManifestError as exc:
                code = errors.exhausted if "at most" in str(exc) else errors.invalid
                raise code(str(exc)) from None
            self.uploading[client] = header.upload_id
        metrics = {k: float(v) for k, v in header.metrics.items()}
        info = UpdateInfo(client, header.round, header.base_version, int(header.num_examples), metrics,
                          header.upload_id)
        writer = SpoolWriter(self.spool, layout, int(header.manifest.total_bytes))
        return UploadSink(client, info, writer, ticket)

    def finish_upload(self, sink: UploadSink, trailer: pb.Trailer) -> None:
        """Validates the stream, waits for room in the buffer, folds it with its staleness discount."""
        client, ticket, info = sink.client_id, sink.round_state, sink.info
        update = self.validated_update(sink, trailer)
        with self.cond:
            while not self.buffer.has_room(self.settings.buffer_size) and not self.finished:
                self.cond.wait(timeout=1.0)
            try:
                if self.finished:
                    raise errors.stale(f"the run finished before client {client}'s update could be folded")
                staleness = self._admit(client, info.base_version)
            except errors.Refusal:
                self._release(client, info.upload_id)
                update.delete()
                raise
            buffer = self.buffer
            buffer.reserved += 1
            target = self.version + 1
        try:
            buffer.aggregator.add(update, self.strategy.weight(info),
                                  self.strategy.scale(info) * self.settings.staleness(staleness))
        except BaseException:
            with self.cond:
                buffer.reserved -= 1
                self._release(client, info.upload_id)
                self.cond.notify_all()
            update.delete()
            raise
        with self.cond:
            self._release(client, info.upload_id)
            buffer.updates.append(update)
            buffer.staleness.append(staleness)
            buffer.bytes_up += sink.writer.total_bytes
            if self.tickets.get(client) is ticket:
                del self.tickets[client]
            self.accepted_uploads[info.upload_id] = None
            while len(self.accepted_uploads) > REMEMBERED_UPLOADS:
                self.accepted_uploads.popitem(last=False)
            folded = len(buffer.updates)
            self.cond.notify_all()
        log.info("version=%d client=%s task=%d update folded (staleness %d, %d examples, %d/%d in buffer)",
                 target, client, info.round, staleness, info.num_examples, folded, self.settings.buffer_size)

    def _release(self, client: str, upload_id: str) -> None:
        """Ends the client's in-flight upload (held until its fold is done, so a retry cannot fold it twice)."""
        if self.uploading.get(client) == upload_id:
            del self.uploading[client]

    def abort_upload(self, sink: UploadSink, reason: str) -> None:
        sink.writer.discard()
        with self.cond:
            self._release(sink.client_id, sink.info.upload_id)
            self.cond.notify_all()
        log.warning("client=%s task=%d upload dropped: %s", sink.client_id, sink.info.round, reason)

    # ----- sessions ----------------------------------------------------------------------------------------------

    def leave(self, session_id: str, reason: str) -> None:
        with self.cond:
            try:
                client = self.sessions.touch(session_id).client_id
            except UnknownSession:
                client = None
            super().leave(session_id, reason)
            if client is not None:
                self.tickets.pop(client, None)

    def _expire(self) -> None:
        for session in self.sessions.expire():
            log.warning("client=%s session expired (no contact for %.0f s)", session.client_id,
                        self.config.session_timeout)
            self.tickets.pop(session.client_id, None)

    # ----- the publishing loop -------------------------------------------------------------------------------------

    def run(self) -> None:
        """Publishes versions until --rounds of them exist, then tells every client to finish."""
        try:
            needed = max(self.config.min_clients, 1)
            if not self._wait_for_clients(needed):
                if self.finished:
                    return
                raise RuntimeError(f"fewer than {needed} clients connected within {self.config.wait_for_clients:.0f} s")
            with self.cond:
                self.started = True
                self.buffer.started = time.monotonic()
                self.cond.notify_all()
            log.info("async mode: a new version every %d update(s), staleness %s, at most %d versions old",
                     self.settings.buffer_size, self.settings.staleness.describe(), self.settings.max_staleness)
            while self.version < self.config.rounds and not self.finished:
                buffer = self._wait_buffer()
                if buffer is None:
                    break
                if not self._publish(buffer):
                    self._discard_buffer(buffer)
        finally:
            self.finish()
            for update in self.buffer.updates:
                update.delete()

    def _wait_buffer(self) -> Buffer | None:
        """The buffer once it holds K folded updates (or, after --round-timeout, at least one); None if finished."""
        idle_since: float | None = None
        with self.cond:
            while not self.finished:
                self._expire()
                buffer, now = self.buffer, time.monotonic()
                if len(buffer.updates) >= self.settings.buffer_size:
                    return buffer
                if buffer.updates and now - buffer.started >= self.config.round_timeout:
                    buffer.sealed = True
                    while not buffer.settled():
                        self.cond.wait(timeout=1.0)
                    log.warning("version=%d published with %d of %d updates after the %.0f s timeout",
                                self.version + 1, len(buffer.updates), self.settings.buffer_size,
                                self.config.round_timeout)
                    return buffer
                if len(self.sessions) == 0:
                    idle_since = idle_since or now
                    if now - idle_since > self.config.wait_for_clients:
                        raise RuntimeError(f"no client connected for {self.config.wait_for_clients:.0f} s")
                else:
                    idle_since = None
                self.cond.wait(timeout=1.0)
        return None

    def _discard_buffer(self, buffer: Buffer) -> None:
        with self.cond:
            if self.buffer is buffer:
                self.buffer = Buffer(StreamingAggregator(self.global_state))
            self.cond.notify_all()
        for update in buffer.updates:
            update.delete()

    def _publish(self, buffer: Buffer) -> bool:
        """Makes the buffer the next version; False (nothing published) when its aggregate is not finite."""
        updates = buffer.updates
        seed_round(self.config.seed, self.version + 1)
        try:
            delta = self.strategy.aggregate(RoundUpdates(self.global_state, updates, buffer.aggregator))
            new_state = OrderedDict((k, v.contiguous())
                                    for k, v in self.strategy.apply(self.global_state, delta).items())
            check_finite(new_state, f"the aggregate of {len(updates)} update(s) toward version {self.version + 1}")
        except ValueError as exc:
            log.error("version=%d not published: %s; its updates are discarded", self.version + 1, exc)
            return False
        with self.cond:
            self.global_state = new_state
            self.version += 1
            self.completed_rounds = self.version
            self.served[self.version] = new_state
            while len(self.served) > SERVED_VERSIONS:
                self.served.popitem(last=False)
            self._encoded = {key: value for key, value in self._encoded.items() if key[0] in self.served}
            self.buffer = Buffer(StreamingAggregator(new_state))
            connected = len(self.sessions)
            self.cond.notify_all()
        evaluation = self.evaluate_after(self.version, new_state)
        infos = [u.info for u in updates if u.info is not None]
        train_loss = mean_train_loss(infos)
        record = {
            "round": self.version, "version": self.version, "mode": "async", "clients": len(updates),
            "distinct_clients": len({i.client_id for i in infos}), "selected": connected,
            "staleness_mean": sum(buffer.staleness) / len(buffer.staleness),
            "staleness_max": max(buffer.staleness), "refused_stale": buffer.refused,
            "train_loss": train_loss, "eval_loss": evaluation["loss"], "eval_accuracy": evaluation["accuracy"],
            "bytes_up": buffer.bytes_up, "bytes_down": buffer.bytes_down,
            "seconds": round(time.monotonic() - buffer.started, 4),
            "folded": [{"client": i.client_id, "task": i.round, "base_version": i.base_version,
                        "num_examples": i.num_examples, "staleness": s} for i, s in zip(infos, buffer.staleness)],
            **client_privacy(infos), **self.strategy.round_metrics(),
            **{f"eval_{key}": value for key, value in evaluation.items()},
        }
        for update in updates:
            update.delete()
        self.runlog.append(record)
        save_checkpoint(self.run_dir, Checkpoint(new_state, self.version, self.completed_rounds,
                                                 self.strategy.state_dict(),
                                                 {"mode": "async", "tasks_issued": self.tasks_issued}))
        log.info("version=%d published: %d update(s), staleness mean %.2f max %d, %s",
                 self.version, len(updates), record["staleness_mean"], record["staleness_max"], describe(evaluation))
        if self.on_round is not None:
            self.on_round(record)
        return True


def async_coordinator(settings: AsyncSettings) -> Callable[..., AsyncCoordinator]:
    """A coordinator factory for server.app.serve: AsyncCoordinator with these settings."""
    return functools.partial(AsyncCoordinator, settings=settings)
