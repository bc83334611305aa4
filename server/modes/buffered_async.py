"""Buffered asynchronous rounds (FedBuff, Nguyen et al. 2022, https://arxiv.org/abs/2106.06639).

Clients never wait for a round: an idle client asking for work gets a TRAIN task on the current global version.
Each arriving update is folded into one running buffer (the same O(model) StreamingAggregator as sync rounds);
every K updates the buffer becomes a new global version:

    x_{v+1} = x_v + Σ nᵢ·f(sᵢ)·Δᵢ / Σ nᵢ,   sᵢ = v − (version update i was trained on)

so a stale update shrinks instead of merely losing share, and with no staleness this is FedAvg. Updates staler
than --max-staleness are refused (FAILED_PRECONDITION) before their bytes are sent. Task.round carries a task
number (one per TRAIN assignment) so an upload names the work it answers; metrics use round = version.
The current and the previous version stay downloadable, so a client told to train on a version that was just
replaced still gets it.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Mapping

from fedstream.server.aggregation.aggregator import StreamingAggregator
from fedstream.server.aggregation.staleness import InverseSqrt, Staleness, make_staleness
from fedstream.server.core import errors
from fedstream.server.aggregation.strategies import Strategy
from fedstream.server.core.config import ServerConfig
from fedstream.server.core.coordinator import Coordinator, NotEnoughClients
from fedstream.server.core.messages import Assignment, TaskKind
from fedstream.server.core.round_mode import RoundMode
from fedstream.server.core.sessions import Session
from fedstream.server.intake.spool import SpooledUpdate
from fedstream.server.intake.upload import UploadSink
from fedstream.server.publication.record import RoundRecord

log = logging.getLogger("fedstream.server")
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


class BufferedAsync(RoundMode):
    name = "async"
    served_versions = 2
    accept_waits = True

    def __init__(self, settings: AsyncSettings | None = None) -> None:
        self.settings = settings or AsyncSettings()
        self.tasks_issued = 0
        self.started = False
        self.tickets: dict[str, Ticket] = {}
        self.uploading: dict[str, str] = {}
        self.accepted_uploads: OrderedDict[str, None] = OrderedDict()

    def bind(self, core: Coordinator) -> None:
        super().bind(core)
        self.buffer = Buffer(StreamingAggregator(core.global_state))

    def check(self, config: ServerConfig, strategy: Strategy) -> None:
        if not strategy.streaming:
            raise ValueError(f"strategy {strategy.name} reads every update of a round at once; async mode folds "
                             "updates as they arrive and needs a streaming strategy (e.g. fedavg)")
        if strategy.name.endswith("+dp-central"):
            raise ValueError("--mode async with --dp central: its noise and accounting assume sampled synchronous "
                             "rounds; use --dp local (clients noise their own updates) or --mode sync")
        refused = {"clients_per_round": "--clients-per-round samples synchronous rounds; in --mode async every "
                                        "idle client trains",
                   "federated_eval": "--federated-eval follows synchronous rounds; use --mode sync",
                   "reproducible": "--reproducible orders each synchronous round's updates; in --mode async the "
                                   "order in which updates arrive decides the versions themselves (use --mode sync, "
                                   "or drop --reproducible)",
                   "prune_schedule": "--prune-schedule prunes after synchronous rounds; use --mode sync"}
        for key, reason in refused.items():
            if getattr(config, key):
                raise ValueError(reason)

    def restore(self, extra: Mapping[str, Any]) -> None:
        self.tasks_issued = int(extra.get("tasks_issued", 0))

    def checkpoint_extra(self) -> dict[str, Any]:
        return {"mode": "async", "tasks_issued": self.tasks_issued}

    def current_round(self) -> int:
        return 0

    # ----- tasks and downloads --------------------------------------------------------------------------------

    def task_for(self, client_id: str) -> Assignment | None:
        """A client asking for work is idle: it gets a fresh task on the current version (any older one lapses).
        No work is handed out before --min-clients have joined."""
        core = self.core
        if not self.started:
            return None
        reason = core.strategy.begin_task(client_id)
        if reason:
            log.warning("no task for client %s: %s; the run ends", client_id, reason)
            core.strategy_stop = reason
            core.finished = True
            core.notify()
            return Assignment(TaskKind.FINISH, message=reason)
        self.tasks_issued += 1
        ticket = Ticket(self.tasks_issued, core.version, client_id)
        self.tickets[client_id] = ticket
        core.observer.client_state(client_id, "training")
        return Assignment(TaskKind.TRAIN, round=ticket.number, version=ticket.version,
                          config=core.train_config(ticket.number, client_id))

    def downloaded(self, client_id: str, nbytes: int) -> None:
        self.buffer.bytes_down += nbytes

    # ----- uploads --------------------------------------------------------------------------------------------

    def _staleness(self, client: str, base_version: int) -> int:
        """The update's staleness, or a FAILED_PRECONDITION refusal when it exceeds --max-staleness."""
        core = self.core
        staleness = core.version - base_version
        if staleness > self.settings.max_staleness:
            ticket = self.tickets.get(client)
            if ticket is not None and ticket.version == base_version:
                del self.tickets[client]
            self.buffer.refused += 1
            raise errors.stale(
                f"client {client} trained on version {base_version}, {staleness} versions behind the current version "
                f"{core.version}; this server accepts updates at most {self.settings.max_staleness} versions old "
                "(--max-staleness): ask for a new task")
        return staleness

    def admit(self, client_id: str, session: Session, header: Any) -> Ticket:
        if header.upload_id and header.upload_id in self.accepted_uploads:
            raise errors.Duplicate()
        if self.core.finished:
            raise errors.stale(f"the run is over; client {client_id}'s update for task {header.round} is not needed")
        ticket = self.tickets.get(client_id)
        if ticket is None or ticket.number != header.round:
            holds = f"its current task is {ticket.number}" if ticket else "it holds no task"
            raise errors.stale(f"client {client_id} sent an update for task {header.round}; {holds}: "
                               "ask for a new task")
        if header.base_version != ticket.version:
            raise errors.invalid(f"client {client_id} sent base_version {header.base_version} for task "
                                 f"{ticket.number}, which starts from version {ticket.version}")
        self._staleness(client_id, ticket.version)
        if client_id in self.uploading:
            raise errors.aborted(f"client {client_id} already has an upload in flight")
        return ticket

    def upload_started(self, client_id: str, ticket: object, header: Any) -> None:
        self.uploading[client_id] = header.upload_id

    def accept(self, sink: UploadSink, update: SpooledUpdate) -> None:
        """Waits for room in the buffer, folds the update with its staleness discount."""
        core, client, ticket, info = self.core, sink.client_id, sink.ticket, sink.info
        with core.cond:
            while not self.buffer.has_room(self.settings.buffer_size) and not core.finished:
                core.cond.wait(timeout=1.0)
            try:
                if core.finished:
                    raise errors.stale(f"the run finished before client {client}'s update could be folded")
                staleness = self._staleness(client, info.base_version)
            except errors.Refusal:
                self._release(client, info.upload_id)
                update.delete()
                raise
            buffer = self.buffer
            buffer.reserved += 1
            target = core.version + 1
        try:
            core.fold(buffer.aggregator, update, info, scale=self.settings.staleness(staleness))
        except BaseException:
            with core.cond:
                buffer.reserved -= 1
                self._release(client, info.upload_id)
                core.notify(())
            update.delete()
            raise
        with core.cond:
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
            core.notify(())
        log.info("version=%d client=%s task=%d update folded (staleness %d, %d examples, %d/%d in buffer)",
                 target, client, info.round, staleness, info.num_examples, folded, self.settings.buffer_size)

    def _release(self, client: str, upload_id: str) -> None:
        """Ends the client's in-flight upload (held until its fold is done, so a retry cannot fold it twice)."""
        if self.uploading.get(client) == upload_id:
            del self.uploading[client]

    def aborted(self, sink: UploadSink, reason: str) -> None:
        self._release(sink.client_id, sink.info.upload_id)

    def client_gone(self, client_id: str, reason: str) -> None:
        self.tickets.pop(client_id, None)

    # ----- the publishing loop --------------------------------------------------------------------------------

    def run(self) -> None:
        """Publishes versions until --rounds of them exist."""
        core = self.core
        try:
            needed = max(core.config.min_clients, 1)
            with core.cond:
                ready = core.wait_until(lambda: len(core.sessions) >= needed, core.config.wait_for_clients)
                if core.finished:
                    return
                if not ready:
                    raise NotEnoughClients(
                        f"fewer than --min-clients {needed} clients connected within --wait-for-clients "
                        f"{core.config.wait_for_clients:g} s (got {len(core.sessions)}); start more clients or "
                        "lower --min-clients")
                self.started = True
                self.buffer.started = time.monotonic()
                core.notify()
            log.info("async mode: a new version every %d update(s), staleness %s, at most %d versions old",
                     self.settings.buffer_size, self.settings.staleness.describe(), self.settings.max_staleness)
            while core.version < core.config.rounds and not core.finished:
                buffer = self._wait_buffer()
                if buffer is None:
                    break
                self._publish(buffer)
                for update in buffer.updates:
                    update.delete()
        finally:
            for update in self.buffer.updates:
                update.delete()

    def _wait_buffer(self) -> Buffer | None:
        """The buffer once it holds K folded updates (or, after --round-timeout, at least one); None if finished."""
        core = self.core
        idle_since: float | None = None
        with core.cond:
            while not core.finished:
                core.expire()
                buffer, now = self.buffer, time.monotonic()
                if len(buffer.updates) >= self.settings.buffer_size:
                    buffer.sealed = True
                    return buffer
                if buffer.updates and now - buffer.started >= core.config.round_timeout:
                    buffer.sealed = True
                    while not buffer.settled():
                        core.cond.wait(timeout=1.0)
                    log.warning("version=%d published with %d of %d updates after the %.0f s timeout",
                                core.version + 1, len(buffer.updates), self.settings.buffer_size,
                                core.config.round_timeout)
                    return buffer
                if len(core.sessions) == 0:
                    idle_since = idle_since or now
                    if now - idle_since > core.config.wait_for_clients:
                        raise NotEnoughClients(f"no client connected for --wait-for-clients "
                                               f"{core.config.wait_for_clients:g} s; the run stops")
                else:
                    idle_since = None
                core.cond.wait(timeout=1.0)
        return None

    def _renew(self, buffer: Buffer) -> None:
        """A fresh buffer on the current version (the old one was published or discarded)."""
        core = self.core
        with core.cond:
            if self.buffer is buffer:
                self.buffer = Buffer(StreamingAggregator(core.global_state))
            core.notify()

    def _publish(self, buffer: Buffer) -> bool:
        """Makes the buffer the next version through the core; False (nothing published) when not finite."""
        core = self.core
        updates = buffer.updates
        infos = [u.info for u in updates if u.info is not None]
        with core.cond:
            connected = len(core.sessions)
        record = RoundRecord(
            round=core.version + 1, version=core.version, mode=self.name, clients=len(updates), selected=connected,
            train_loss=None, bytes_up=buffer.bytes_up, bytes_down=buffer.bytes_down, seconds=0.0,
            extras={"distinct_clients": len({i.client_id for i in infos}),
                    "staleness_mean": sum(buffer.staleness) / len(buffer.staleness),
                    "staleness_max": max(buffer.staleness), "refused_stale": buffer.refused,
                    "folded": [{"client": i.client_id, "task": i.round, "base_version": i.base_version,
                                "num_examples": i.num_examples, "staleness": s}
                               for i, s in zip(infos, buffer.staleness)]})
        published = core.publish(core.version + 1, updates, buffer.aggregator, record, started=buffer.started)
        self._renew(buffer)
        if published:
            log.info("version=%d published: %d update(s), staleness mean %.2f max %d", core.version, len(updates),
                     record.extras["staleness_mean"], record.extras["staleness_max"])
        return published
