"""The coordinator core: sessions, task dispatch, downloads, upload intake and the one publication path.

Plain Python with no network: the transport translates messages into these calls, and tests drive them
directly. One condition variable guards the state; byte work (spooling, checks, folds, encoding) runs outside
it. What differs between synchronous and asynchronous federations lives in the round mode (server/modes/).
"""

from __future__ import annotations

import logging
import math
import random
import re
import threading
import time
import uuid
from collections import OrderedDict
from typing import Any, Callable, Iterable, Iterator, Mapping

import torch

from fedstream.common.codecs.plan import accepted_codecs, compression_options
from fedstream.common.logs import printable
from fedstream.common.tasks import Task
from fedstream.common.wire.framing import Crc32, iter_chunks
from fedstream.common.wire.manifest import reference_of
from fedstream.common.wire.protocol import LONG_POLL_MS, PROTOCOL_VERSION
from fedstream.common.wire.tensors import all_finite
from fedstream.server.aggregation.aggregator import NonFiniteUpdateError, StreamingAggregator, inspect_update
from fedstream.server.aggregation.strategies import RoundUpdates, Strategy
from fedstream.server.core import errors
from fedstream.server.core.admission import TransferSlots
from fedstream.server.core.client_settings import apply_client_settings
from fedstream.server.core.config import ServerConfig
from fedstream.server.core.join_limit import JoinRateLimit
from fedstream.server.core.observer import NullObserver, Observer
from fedstream.server.core.relay_policy import RELAY, check_relay_join
from fedstream.server.core.messages import (Assignment, Beat, DownloadHeader, DownloadStream, JoinResult, TaskKind,
                                            TrainConfig)
from fedstream.server.core.sessions import Session, SessionRegistry, UnknownSession
from fedstream.server.aggregation.bounds import UpdateBounds
from fedstream.server.intake.spool import (SpoolError, SpoolPool, SpooledUpdate, StreamIntegrityError, UpdateInfo,
                                           clear_spool)
from fedstream.server.intake.upload import UploadSink, check_header
from fedstream.server.core.round_mode import RoundMode
from fedstream.server.publication.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from fedstream.server.publication.epilogue import Epilogue
from fedstream.server.publication.publisher import ModelPublisher
from fedstream.server.publication.pruning_schedule import GlobalPruning, PruneSchedule
from fedstream.server.publication.record import RoundRecord
from fedstream.server.publication.runlog import RunLog

log = logging.getLogger("fedstream.server")

CLIENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@:-]{0,127}")
MAX_WAIT_SECONDS = LONG_POLL_MS / 1000
EXPIRE_EVERY = 0.5


class Coordinator:
    def __init__(self, task: Task, strategy: Strategy, config: ServerConfig, mode: RoundMode,
                 on_round: Callable[[dict], None] | None = None, observer: Observer | None = None) -> None:
        self.task = task
        self.strategy = strategy
        self.config = config
        self.mode = mode
        self.observer: Observer = observer or NullObserver()
        self.cond = threading.Condition()
        self.wake: Callable[[Iterable[str] | None], None] = lambda clients: None
        self.sessions = SessionRegistry(config.session_timeout)
        self.run_dir = config.run_dir = type(config.run_dir)(config.run_dir)
        self.spool_dir = self.run_dir / "spool"
        clear_spool(self.spool_dir)
        self.spool = SpoolPool(self.spool_dir / "slots")
        self.transfers = TransferSlots(config.max_transfers)
        self.join_limit = JoinRateLimit(config.join_rate, config.join_burst)
        self.runlog = RunLog(self.run_dir)
        self.epilogue = Epilogue(on_error=self._epilogue_failed)
        self.on_round = on_round
        self.run_id = uuid.uuid4().hex[:12]
        torch.manual_seed(config.seed)
        self.model = task.make_model()
        self.global_state: OrderedDict[str, torch.Tensor] = OrderedDict(
            (k, v.detach().contiguous()) for k, v in task.federated_state(self.model).items())
        self.reference = reference_of(self.global_state)
        self.model_bytes = sum(t.numel() * t.element_size() for t in self.global_state.values())
        self.max_update_bytes = config.max_update_bytes or 2 * self.model_bytes + (1 << 20)
        self.bounds = UpdateBounds(config)
        self.bounds.set_model(self.global_state)
        self.version = 0
        self.completed_rounds = 0
        self.finished = False
        self.stopping = ""
        self.strategy_stop = ""
        self.returning: set[str] = set()
        self._expired_at = 0.0
        self.pruning = GlobalPruning(PruneSchedule.parse(config.prune_schedule, config.rounds), self.global_state)
        self.publisher = ModelPublisher(config.download_codec, config.incremental_download, config.topk_fraction,
                                        keep_previous=mode.served_versions > 1)
        mode.check(config, strategy)
        mode.bind(self)
        checkpoint = load_checkpoint(self.run_dir)
        if checkpoint is not None:
            self._restore(checkpoint)
        self.pruning.restore(self.global_state, self.completed_rounds)
        self.publisher.publish(self.version, self.global_state, self.pruning.masked)

    def _restore(self, checkpoint: Checkpoint) -> None:
        for name, tensor in checkpoint.global_state.items():
            if name not in self.reference or self.reference[name] != (tensor.dtype, tuple(tensor.shape)):
                raise ValueError(f"checkpoint in {self.run_dir} does not match task {self.task.name}: tensor {name}")
        self.global_state = OrderedDict((k, checkpoint.global_state[k].contiguous()) for k in self.reference)
        self.version = checkpoint.version
        self.completed_rounds = checkpoint.completed_rounds
        self.strategy.load_state_dict(checkpoint.strategy_state)
        extra = checkpoint.extra or {}
        self.returning = set(extra.get("clients", []))
        self.bounds.restore(extra.get("bounds", {}))
        self.mode.restore(extra)
        self.runlog.truncate(self.completed_rounds)
        log.info("resumed run from %s at round %d (version %d)", self.run_dir, self.completed_rounds, self.version)

    # ----- sessions ------------------------------------------------------------------------------------------

    def join(self, request: Any) -> JoinResult:
        if request.protocol_version != PROTOCOL_VERSION:
            raise errors.stale(
                f"client speaks protocol v{request.protocol_version}; this server speaks v{PROTOCOL_VERSION}: "
                "install a matching fedstream release")
        client_id = request.client_id
        if not CLIENT_ID.fullmatch(client_id):
            raise errors.invalid(f"client_id must be 1 to 128 characters from letters, digits and . _ @ : - "
                                 f"(starting with a letter or digit); got {client_id[:40]!r}")
        if request.num_examples < 0:
            raise errors.invalid(f"num_examples must be >= 0, got {request.num_examples}")
        offered = list(request.codecs) or ["raw"]
        capabilities = frozenset(getattr(request, "capabilities", ()))
        if len(request.device) > 128 or len(offered) > 32 or len(capabilities) > 16:
            raise errors.invalid(f"client {client_id}: device name ({len(request.device)} chars), codec list "
                                 f"({len(offered)} entries) or capabilities ({len(capabilities)}) too long; at most "
                                 "128 chars, 32 codecs and 16 capabilities")
        self.mode.admit_client(client_id, capabilities)
        if RELAY in capabilities:
            check_relay_join(client_id, self.config, self.strategy, self.mode)
        codec = self.config.upload_codec if self.config.upload_codec in offered else "raw"
        examples = self.bounds.joined_examples(client_id, int(request.num_examples))
        with self.cond:
            if self.sessions.by_client(client_id) is None and len(self.sessions) >= self.config.max_sessions:
                raise errors.exhausted(f"client {client_id} cannot join: the server holds its limit of "
                                       f"{self.config.max_sessions} sessions (--max-sessions)")
            session, previous = self.sessions.open(client_id, request.device[:128], offered, examples, codec,
                                                   capabilities)
            if previous is not None:
                self.mode.client_back(client_id)
            self.cond.notify_all()
        self.observer.client_joined(client_id, request.device[:128])
        log.info("client=%s joined (device=%s, examples=%d, upload codec=%s)", client_id, printable(request.device),
                 examples, codec)
        return JoinResult(session.session_id, PROTOCOL_VERSION, codec, self.config.heartbeat_seconds, self.run_id,
                          self.config.chunk_bytes, self.transfers.limit > 0)

    def session(self, session_id: str) -> Session:
        """The live session (touched); UNAUTHENTICATED for unknown or expired ones. Call under the lock."""
        try:
            return self.sessions.touch(session_id)
        except UnknownSession as exc:
            raise errors.unauthenticated(str(exc)) from None

    def has_session(self, session_id: str) -> bool:
        with self.cond:
            return self.sessions.get(session_id) is not None

    def client_of(self, session_id: str) -> str:
        with self.cond:
            return self.session(session_id).client_id

    def heartbeat(self, session_id: str) -> Beat:
        with self.cond:
            self.session(session_id)
            return Beat(self.version, self.mode.current_round(), self.finished,
                        self.finish_message() if self.finished else "")

    def finish_message(self) -> str:
        """Why the run ended, for FINISH tasks and heartbeats: a stop signal, the strategy (DP budget), or its end."""
        return self.stopping or self.strategy_stop or "the run is over"

    def leave(self, session_id: str, reason: str) -> None:
        reason = reason or "no reason given"
        with self.cond:
            session = self.sessions.close(session_id)
            if session is not None:
                self.mode.client_gone(session.client_id, f"left: {reason}")
            self.cond.notify_all()
        if session is not None:
            self.observer.client_left(session.client_id)
            log.info("client=%s left: %s", session.client_id, printable(reason))

    def expire(self) -> None:
        """Closes sessions that stopped talking (a scan of all sessions, so at most every EXPIRE_EVERY seconds).
        Call under the lock."""
        now = time.monotonic()
        if now - self._expired_at < EXPIRE_EVERY:
            return
        self._expired_at = now
        for session in self.sessions.expire():
            reason = f"no contact for {self.config.session_timeout:.0f} s"
            log.warning("client=%s session expired (%s)", session.client_id, reason)
            self.mode.client_gone(session.client_id, reason)
            self.observer.client_dropped(session.client_id, reason)

    # ----- tasks ----------------------------------------------------------------------------------------------

    def task_now(self, session_id: str) -> Assignment | None:
        """The client's assignment now, or None when it should wait (never blocks)."""
        with self.cond:
            client = self.session(session_id).client_id
            if self.finished:
                return Assignment(TaskKind.FINISH, message=self.finish_message())
            return self.mode.task_for(client)

    def next_task(self, session_id: str, wait_s: float) -> Assignment:
        """task_now, waiting up to wait_s (at most 30 s) on this thread for one; WAIT when none came."""
        deadline = time.monotonic() + max(0.0, min(wait_s, MAX_WAIT_SECONDS))
        with self.cond:
            while True:
                task = self.task_now(session_id)
                if task is not None or time.monotonic() >= deadline:
                    return task or Assignment(TaskKind.WAIT, retry_after_ms=200)
                self.cond.wait(timeout=max(0.0, deadline - time.monotonic()))

    def notify(self, clients: Iterable[str] | None = None) -> None:
        """Something changed: wake the round thread and the long polls of `clients` (None: every client; an
        empty list: none, for changes no waiting client's work depends on, such as an accepted upload)."""
        self.cond.notify_all()
        if clients is None or clients:
            self.wake(clients)

    def train_config(self, round_number: int, client_id: str = "") -> TrainConfig:
        c = self.config
        values = self.strategy.configure_client({
            "local_epochs": float(c.local_epochs if c.local_epochs is not None else self.task.defaults.local_epochs),
            "batch_size": float(c.batch_size or self.task.defaults.batch_size),
            "learning_rate": float(c.learning_rate or self.task.defaults.learning_rate),
            "proximal_mu": 0.0, "clip_norm": 0.0, "noise_multiplier": 0.0,
        })
        options = dict(c.train_options)
        options["seed"] = str(c.seed * 1_000_003 + round_number)
        options.update(compression_options(c.upload_codec, c.topk_fraction, c.error_feedback, c.incremental_download))
        config = TrainConfig(local_epochs=int(values["local_epochs"]), batch_size=int(values["batch_size"]),
                             learning_rate=values["learning_rate"], proximal_mu=values["proximal_mu"],
                             clip_norm=values["clip_norm"], noise_multiplier=values["noise_multiplier"],
                             options=options)
        return apply_client_settings(config, c.client_settings.get(client_id))

    def sample(self, number: int, attempt: int, k: int | None = None) -> list[str]:
        """K connected clients (all when K is 0), drawn by a generator seeded from (seed, round, attempt)."""
        connected = self.sessions.client_ids()
        k = self.config.clients_per_round if k is None else k
        rng = random.Random(f"{self.config.seed}/{number}/{attempt}")
        return sorted(rng.sample(connected, min(k or len(connected), len(connected))))

    def wait_until(self, ready: Callable[[], bool], timeout: float) -> bool:
        """Waits on the lock (expiring silent sessions each second) until ready(), the run ends, or timeout.
        Call under the lock."""
        deadline = time.monotonic() + timeout
        while not ready():
            self.expire()
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.finished:
                return ready()
            self.cond.wait(timeout=min(remaining, 1.0))
        return True

    # ----- downloads ------------------------------------------------------------------------------------------

    def open_download(self, session_id: str, version: int, have_version: int = 0) -> DownloadStream:
        with self.cond:
            client = self.session(session_id).client_id
        try:
            served = self.publisher.serve(version, have_version)  # may encode the version: outside the lock
        except ValueError:
            kept = ", ".join(str(v) for v in self.publisher.versions())
            which = "no longer served" if version < self.version else "not served"
            raise errors.stale(f"version {version} is {which} (the server keeps version(s) {kept}); "
                               f"the current version is {self.version}: ask for a new task") from None
        with self.cond:
            self.session(session_id).held_version = version
        header = DownloadHeader(version, served.manifest, served.incremental, served.base_version,
                                list(self.publisher.masked))
        crc = Crc32()

        def chunks() -> Iterator[memoryview | bytes]:
            for piece in iter_chunks(served.buffers, self.config.chunk_bytes):
                crc.update(piece)
                yield piece
            with self.cond:
                self.mode.downloaded(client, crc.nbytes)
            self.observer.model_sent(client, crc.nbytes)

        return DownloadStream(header, chunks(), crc)

    # ----- uploads --------------------------------------------------------------------------------------------

    def begin_upload(self, header: Any) -> UploadSink:
        """Checks the header (session, the mode's state, fields, manifest); the sink its bytes go to."""
        with self.cond:
            session = self.session(header.session_id)
            client = session.client_id
            ticket = self.mode.admit(client, session, header)
            relay = RELAY in session.capabilities
            joined = self.bounds.max_examples if relay else session.num_examples
            layout = check_header(client, header, joined, self.mode.upload_reference(),
                                  accepted_codecs(session.upload_codec), self.max_update_bytes, relay)
            self.mode.upload_started(client, ticket, header)
        self.observer.client_state(client, "uploading")
        return UploadSink.open(self.spool, client, header, layout, ticket, relay)

    def is_relay(self, client_id: str) -> bool:
        """Whether client_id's session joined as a relay (its updates are partial sums). Call under the lock."""
        session = self.sessions.by_client(client_id)
        return session is not None and RELAY in session.capabilities

    def validated_update(self, sink: UploadSink, trailer: Any) -> SpooledUpdate:
        """The spooled update once its length, CRC and values (finite; norm recorded) check out; else a refusal."""
        client = sink.client_id
        try:
            update = sink.writer.finish(trailer.crc32, trailer.total_bytes)
        except StreamIntegrityError as exc:
            self.abort_upload(sink, f"stream failed its integrity check: {exc}")
            raise errors.data_loss(f"client {client}: {exc}") from None
        try:
            sink.info.sq_norm = inspect_update(update)
        except (NonFiniteUpdateError, SpoolError) as exc:
            update.delete()
            self.abort_upload(sink, f"rejected: {exc}")
            raise errors.invalid(f"client {client}: {exc}; the update was discarded") from None
        update.info = sink.info
        return update

    def finish_upload(self, sink: UploadSink, trailer: Any) -> None:
        """Validates the whole stream and hands it to the mode, which folds it or refuses it."""
        update = self.validated_update(sink, trailer)
        started = time.perf_counter()
        try:
            self.mode.accept(sink, update)
        except errors.Refusal as refusal:
            self.observer.refusal(refusal.code, refusal.message, sink.client_id)
            raise
        self.observer.fold_finished(time.perf_counter() - started)
        self.observer.client_contributed(sink.client_id, sink.writer.total_bytes, sink.info.metrics.get("train_seconds"))

    def abort_upload(self, sink: UploadSink, reason: str) -> None:
        sink.writer.discard()
        with self.cond:
            self.mode.aborted(sink, reason)
            self.cond.notify_all()
        self.observer.client_dropped(sink.client_id, reason)
        log.warning("client=%s upload (%s) dropped: %s", sink.client_id, sink.info.round, reason)

    def fold(self, aggregator: StreamingAggregator, update: SpooledUpdate, info: UpdateInfo, scale: float = 1.0,
             key: str | None = None) -> None:
        """One accepted update into a running sum, its weight and norm bounded (the rule for every mode)."""
        weight, scale = self.bounds.bound(info, self.strategy.weight(info), self.strategy.scale(info) * scale)
        if not aggregator.room_for(weight * scale * math.sqrt(info.sq_norm)):
            raise errors.invalid(f"client {info.client_id}'s update (norm {math.sqrt(info.sq_norm):.3g}, weight "
                                 f"{weight:g}) would overflow the round's float32 sum; it was refused and the "
                                 "other updates kept")
        aggregator.add(update, weight, scale, key=key)

    def report_evaluation(self, report: Any) -> None:
        with self.cond:
            client = self.session(report.session_id).client_id
            self.mode.evaluation_report(client, report)
            self.cond.notify_all()

    def exchange(self, session_id: str, round_number: int, phase: str, payload: bytes) -> bytes:
        with self.cond:
            client = self.session(session_id).client_id
        return self.mode.exchange(client, round_number, phase, payload)

    # ----- publication: one path for every mode ---------------------------------------------------------------

    def publish(self, number: int, updates: list[SpooledUpdate], aggregator: StreamingAggregator | None,
                record: RoundRecord, after: Callable[[RoundRecord], None] | None = None,
                started: float | None = None) -> bool:
        """aggregate → apply → finite check → pruning → publish the version → record and checkpoint (in the
        epilogue, beside the next round). False, with nothing applied, when the aggregate is not finite."""
        self.epilogue.wait()  # the previous epilogue's checkpoint has read the strategy state this one changes
        seed_round(self.config.seed, number)
        try:
            delta = self.strategy.aggregate(RoundUpdates(self.global_state, updates, aggregator))
            new_state = self.strategy.apply(self.global_state, delta)
            check_finite(new_state, f"the aggregate toward version {self.version + 1}")
        except ValueError as exc:
            log.error("version=%d not published: %s", self.version + 1, exc)
            self.observer.event("retry", f"version {self.version + 1} not published: {exc}")
            return False
        masks_changed = self.pruning.after_round(number, new_state)
        prepared = self.publisher.prepare(self.version + 1, new_state, self.pruning.masked, masks_changed)
        infos = [u.info for u in updates if u.info is not None]
        bounds = self.bounds.metrics()  # the bounds this round's folds used
        self.bounds.round_closed(infos)
        with self.cond:
            self.global_state = OrderedDict((k, v.contiguous()) for k, v in new_state.items())
            self.version += 1
            self.completed_rounds = number
            self.publisher.commit(prepared, self.pruning.masked)
            connected = self.sessions.client_ids()
            self.notify()
        record.version = self.version
        if started is not None:
            record.seconds = round(time.monotonic() - started, 4)
        reported = client_metrics(infos)
        record.train_loss = reported.pop("train_loss")
        record.extras.update(reported)
        record.extras.update(bounds)
        record.extras.update({**self.strategy.round_metrics(), **self.pruning.metrics(self.global_state),
                              **self.publisher.round_metrics()})
        checkpoint = Checkpoint(self.global_state, self.version, self.completed_rounds, self.strategy.state_dict(),
                                {"clients": connected, "bounds": self.bounds.state(), **self.mode.checkpoint_extra()})
        if after is not None:
            self._finish(record, checkpoint, after)  # the mode's own step (clients evaluate) before the next round
        else:
            self.epilogue.submit(lambda: self._finish(record, checkpoint, None))
        return True

    def adopt(self, version: int, state: Mapping[str, torch.Tensor], masked: list[str]) -> None:
        """Makes another server's version this core's current one, served as it is (a relay serves its upstream's
        versions instead of publishing its own): checked against the model's layout, then published."""
        for name, tensor in state.items():
            if self.reference.get(name) != (tensor.dtype, tuple(tensor.shape)):
                raise ValueError(f"version {version} from upstream has tensor {name} as {tensor.dtype} "
                                 f"{list(tensor.shape)}; this server's model has {self.reference.get(name)}")
        if set(state) != set(self.reference):
            raise ValueError(f"version {version} from upstream names other tensors than this server's model: "
                             f"{sorted(set(state) ^ set(self.reference))[:3]}")
        adopted = OrderedDict((k, state[k].contiguous()) for k in self.reference)
        prepared = self.publisher.prepare(version, adopted, masked, masks_changed=True)
        self.bounds.set_model(adopted)
        with self.cond:
            self.global_state = adopted
            self.version = version
            self.publisher.commit(prepared, masked)
            self.notify()

    def _finish(self, record: RoundRecord, checkpoint: Checkpoint, after: Callable[[RoundRecord], None] | None) -> None:
        """The epilogue: evaluation, the mode's own step, the metrics line, the checkpoint, the callbacks."""
        record.add_evaluation(self.evaluate_after(record.round, checkpoint.global_state))
        if after is not None:
            after(record)
        line = record.as_dict()
        self.runlog.append(line)
        save_checkpoint(self.run_dir, checkpoint)
        log.info("%s=%d closed: %d update(s), %s", "round" if record.mode == "sync" else "version", record.round,
                 record.clients, describe(line))
        self.observer.round_recorded(line)
        if self.on_round is not None:
            self.on_round(line)

    def _epilogue_failed(self, exc: BaseException) -> None:
        log.error("round epilogue failed (%s: %s); the run stops after the current round's transfers",
                  type(exc).__name__, exc)
        self.stop(f"the server could not finish a round: {type(exc).__name__}: {exc}")

    def evaluate(self, state: Mapping[str, torch.Tensor]) -> dict[str, float]:
        self.task.load_federated_state(self.model, state)
        return self.task.evaluate(self.model, self.task.test_data, torch.device("cpu"))

    def evaluate_after(self, number: int, state: Mapping[str, torch.Tensor]) -> dict[str, float | None]:
        """Server-side evaluation of round (or version) `number`: every eval_every-th one and the last one;
        loss and accuracy are None for the others."""
        if number % max(1, self.config.eval_every) and number < self.config.rounds:
            self.task.load_federated_state(self.model, state)  # no copy; lets the previous version's tensors go
            return {"loss": None, "accuracy": None}
        return self.evaluate(state)

    # ----- the run --------------------------------------------------------------------------------------------

    def run(self) -> None:
        """Runs the mode until the configured count, then tells every client to finish."""
        try:
            self.mode.run()
        finally:
            self.finish()

    def end_by_strategy(self, reason: str) -> None:
        """The strategy ends the run (DP: the next step would pass --target-epsilon)."""
        with self.cond:
            self.strategy_stop = reason
            self.finished = True
            self.notify()

    def stop(self, reason: str) -> None:
        """Ends the run early (SIGTERM): the open round is abandoned and polling clients are told to finish."""
        with self.cond:
            self.stopping = reason
            self.finished = True
            self.notify()
        log.warning("stopping: %s", reason)

    def finish(self) -> None:
        try:
            self.epilogue.wait()
        finally:
            with self.cond:
                self.finished = True
                self.notify()
            self.spool.close()
            self.runlog.write_model(self.global_state)

    def wait_clients_gone(self, timeout: float) -> None:
        """After finishing, gives connected clients a moment to fetch their FINISH task."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.sessions) and time.monotonic() < deadline:
                self.expire()
                self.cond.wait(timeout=0.2)


class NotEnoughClients(RuntimeError):
    """The federation never gathered the clients it needs; the message says how many and how long it waited."""


def describe(record: Mapping[str, Any]) -> str:
    """The log's words for a round's server-side evaluation."""
    if record.get("eval_accuracy") is None:
        return "not evaluated (--eval-every)"
    return f"eval accuracy {record['eval_accuracy']:.4f}, loss {record['eval_loss']:.4f}"


def seed_round(seed: int, number: int) -> None:
    """Seeds the server's global RNGs from (seed, round), so aggregation randomness is the same after a resume."""
    value = seed * 1_000_003 + number
    torch.manual_seed(value)
    random.seed(value)


def client_metrics(infos: list[UpdateInfo]) -> dict[str, float | None]:
    """From the clients' reports: the example-weighted train_loss and personal_* metrics, and the largest ε of
    clients training with DP-SGD."""
    out: dict[str, float | None] = {"train_loss": weighted_mean(infos, "train_loss")}
    for key in sorted({k for i in infos for k in i.metrics if k.startswith("personal_")}):
        out[key] = weighted_mean(infos, key)
    spent = [i.metrics["dp_sgd_epsilon"] for i in infos if "dp_sgd_epsilon" in i.metrics]
    if spent:
        out["dp_sgd_epsilon_max"] = max(spent)
    return out


def weighted_mean(infos: list[UpdateInfo], key: str) -> float | None:
    reported = [i for i in infos if key in i.metrics]
    weight = sum(i.num_examples for i in reported)
    if not weight:
        return None
    value = sum(i.metrics[key] * i.num_examples for i in reported) / weight
    return value if math.isfinite(value) else None


def check_finite(state: Mapping[str, torch.Tensor], what: str) -> None:
    for name, tensor in state.items():
        if not all_finite(tensor):
            raise ValueError(f"{what} holds NaN or Inf in {name}; the global model was left unchanged")
