"""The coordinator: sessions, tasks, uploads and downloads, and the synchronous round loop.

Plain Python with no network: the gRPC servicer translates messages into these calls, and tests can drive
them directly. One condition variable guards all state; model bytes are folded outside it.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping

import torch

from fedstream.common.codec_plan import accepted_codecs, compression_options
from fedstream.common.manifest import ManifestError, check_manifest, reference_of
from fedstream.common.proto import coordinator_pb2 as pb
from fedstream.common.tasks import Task
from fedstream.common.tensors import all_finite
from fedstream.common.wire import DEFAULT_CHUNK_BYTES, Crc32, iter_chunks
from fedstream.server import errors
from fedstream.server.admission import DEFAULT_LIMIT as DEFAULT_TRANSFER_LIMIT
from fedstream.server.admission import TransferSlots
from fedstream.server.aggregator import NonFiniteUpdateError, StreamingAggregator, inspect_update
from fedstream.server.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from fedstream.server.epilogue import Epilogue
from fedstream.server.join_limit import DEFAULT_BURST as DEFAULT_JOIN_BURST
from fedstream.server.join_limit import DEFAULT_RATE as DEFAULT_JOIN_RATE
from fedstream.server.join_limit import JoinRateLimit
from fedstream.server.client_settings import apply_client_settings
from fedstream.server.evaluation import EvaluationRound
from fedstream.server.round import RoundState
from fedstream.server.model_publisher import ModelPublisher
from fedstream.server.pruning_schedule import GlobalPruning, PruneSchedule
from fedstream.server.runlog import RunLog
from fedstream.server.sessions import SessionRegistry, UnknownSession
from fedstream.server.spool import (SpoolError, SpoolPool, SpoolWriter, SpooledUpdate, StreamIntegrityError, UpdateInfo,
                                   clear_spool)
from fedstream.server.strategies import RoundUpdates, Strategy

from fedstream.common.protocol import PROTOCOL_VERSION
log = logging.getLogger("fedstream.server")


@dataclass
class ServerConfig:
    rounds: int = 10
    clients_per_round: int = 0
    min_clients: int = 1
    round_timeout: float = 120.0
    seed: int = 0
    run_dir: Path = Path("runs/latest")
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    upload_codec: str = "raw"
    download_codec: str = "raw"
    topk_fraction: float = 0.01
    error_feedback: bool = True
    incremental_download: bool = False
    prune_schedule: str = ""
    heartbeat_seconds: int = 5
    session_timeout: float = 30.0
    max_update_bytes: int = 0
    federated_eval: bool = False
    eval_every: int = 1
    reproducible: bool = False
    max_sessions: int = 10_000
    join_rate: float = DEFAULT_JOIN_RATE
    join_burst: int = DEFAULT_JOIN_BURST
    max_transfers: int = DEFAULT_TRANSFER_LIMIT
    wait_for_clients: float = 600.0
    local_epochs: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    train_options: dict[str, str] = field(default_factory=dict)
    client_settings: dict[str, dict[str, str]] = field(default_factory=dict)


@dataclass
class DownloadStream:
    header: pb.ModelHeader
    chunks: Iterator[memoryview | bytes]
    crc: Crc32


class UploadSink:
    """One in-flight upload: its header checks passed; data goes to the spool until the trailer arrives."""

    def __init__(self, client_id: str, info: UpdateInfo, writer: SpoolWriter, round_state: RoundState) -> None:
        self.client_id = client_id
        self.info = info
        self.writer = writer
        self.round_state = round_state

    def write(self, data: memoryview | bytes) -> None:
        try:
            self.writer.write(data)
        except SpoolError as exc:
            raise errors.invalid(f"client {self.client_id}: {exc}; the upload was dropped") from None


class Coordinator:
    def __init__(self, task: Task, strategy: Strategy, config: ServerConfig,
                 on_round: Callable[[dict], None] | None = None) -> None:
        self.task = task
        self.strategy = strategy
        self.config = config
        self.cond = threading.Condition()
        self.sessions = SessionRegistry(config.session_timeout)
        self.run_dir = Path(config.run_dir)
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
            (k, v.detach().contiguous()) for k, v in self.model.state_dict().items()
        )
        self.reference = reference_of(self.global_state)
        model_bytes = sum(t.numel() * t.element_size() for t in self.global_state.values())
        self.max_update_bytes = config.max_update_bytes or 2 * model_bytes + (1 << 20)
        self.version = 0
        self.completed_rounds = 0
        self.round: RoundState | None = None
        self.evaluation: EvaluationRound | None = None
        self.finished = False
        self.stopping = ""
        self.strategy_stop = ""
        self._returning: set[str] = set()
        self._encoded: dict[tuple[int, str], tuple[pb.Manifest, list]] = {}
        self.pruning = GlobalPruning(PruneSchedule.parse(config.prune_schedule, config.rounds), self.model)
        self.publisher = ModelPublisher(config.download_codec, config.incremental_download, config.topk_fraction)
        checkpoint = load_checkpoint(self.run_dir)
        if checkpoint is not None:
            self._restore(checkpoint)
        self.pruning.restore(self.global_state, self.completed_rounds)
        self.publisher.publish(self.version, self.global_state, self.pruning.masked)

    # ----- state shared with the round loop -----------------------------------------------------------------

    def _restore(self, checkpoint: Checkpoint) -> None:
        for name, tensor in checkpoint.global_state.items():
            if name not in self.reference or self.reference[name] != (tensor.dtype, tuple(tensor.shape)):
                raise ValueError(f"checkpoint in {self.run_dir} does not match task {self.task.name}: tensor {name}")
        self.global_state = OrderedDict((k, checkpoint.global_state[k].contiguous()) for k in self.reference)
        self.version = checkpoint.version
        self.completed_rounds = checkpoint.completed_rounds
        self.strategy.load_state_dict(checkpoint.strategy_state)
        self._returning = set((checkpoint.extra or {}).get("clients", []))
        self.runlog.truncate(self.completed_rounds)
        log.info("resumed run from %s at round %d (version %d)", self.run_dir, self.completed_rounds, self.version)

    # ----- client operations (called by the servicer) ---------------------------------------------------------

    def join(self, request: pb.JoinRequest) -> pb.JoinReply:
        if request.protocol_version != PROTOCOL_VERSION:
            raise errors.stale(
                f"client speaks protocol v{request.protocol_version}; this server speaks v{PROTOCOL_VERSION}: "
                "install a matching fedstream release"
            )
        if not request.client_id or len(request.client_id) > 128:
            raise errors.invalid("client_id must be 1 to 128 characters")
        if request.num_examples < 0:
            raise errors.invalid(f"num_examples must be >= 0, got {request.num_examples}")
        offered = list(request.codecs) or ["raw"]
        codec = self.config.upload_codec if self.config.upload_codec in offered else "raw"
        if len(request.device) > 128 or len(offered) > 32:
            raise errors.invalid(f"client {request.client_id}: device name ({len(request.device)} chars) or codec "
                                 f"list ({len(offered)} entries) too long; at most 128 chars and 32 codecs")
        with self.cond:
            if self.sessions.by_client(request.client_id) is None and len(self.sessions) >= self.config.max_sessions:
                raise errors.exhausted(f"client {request.client_id} cannot join: the server holds its limit of "
                                       f"{self.config.max_sessions} sessions (--max-sessions)")
            session, previous = self.sessions.open(request.client_id, request.device, offered,
                                                   request.num_examples, codec)
            if previous is not None and self.round is not None:
                self.round.rejoined(request.client_id)
            self.cond.notify_all()
        log.info("client=%s joined (device=%s, examples=%d, upload codec=%s)", request.client_id, request.device,
                 request.num_examples, codec)
        return pb.JoinReply(session_id=session.session_id, protocol_version=PROTOCOL_VERSION, upload_codec=codec,
                            heartbeat_seconds=self.config.heartbeat_seconds, run_id=self.run_id,
                            chunk_bytes=self.config.chunk_bytes, upload_admission=self.transfers.limit > 0)

    def _session(self, session_id: str):
        try:
            return self.sessions.touch(session_id)
        except UnknownSession as exc:
            raise errors.unauthenticated(str(exc)) from None

    def client_of(self, session_id: str) -> str:
        """The client id a live session belongs to (UNAUTHENTICATED for unknown or expired sessions)."""
        with self.cond:
            return self._session(session_id).client_id

    def heartbeat(self, session_id: str) -> pb.HeartbeatReply:
        with self.cond:
            self._session(session_id)
            return pb.HeartbeatReply(version=self.version, round=self.round.number if self.round else 0,
                                     finished=self.finished,
                                     finish_message=self.finish_message() if self.finished else "")

    def finish_message(self) -> str:
        """Why the run ended, for FINISH tasks and heartbeats: a stop signal, the strategy (DP budget), or its end."""
        return self.stopping or self.strategy_stop or "the run is over"

    def leave(self, session_id: str, reason: str) -> None:
        with self.cond:
            session = self.sessions.close(session_id)
            if session is not None and self.round is not None:
                self.round.drop(session.client_id, f"left: {reason or 'no reason given'}")
            self.cond.notify_all()
        if session is not None:
            log.info("client=%s left: %s", session.client_id, reason or "no reason given")

    def next_task(self, session_id: str, wait_s: float) -> pb.Task:
        deadline = time.monotonic() + max(0.0, min(wait_s, 30.0))
        with self.cond:
            while True:
                session = self._session(session_id)
                task = self._task_for(session.client_id)
                if task is not None or time.monotonic() >= deadline:
                    return task or pb.Task(kind=pb.Task.WAIT, retry_after_ms=200)
                self.cond.wait(timeout=max(0.0, deadline - time.monotonic()))

    def _task_for(self, client_id: str) -> pb.Task | None:
        if self.finished:
            return pb.Task(kind=pb.Task.FINISH, message=self.finish_message())
        if self.evaluation is not None:
            return self.evaluation.task_for(client_id)
        rnd = self.round
        if rnd is None or rnd.closed or not rnd.is_selected(client_id):
            return None
        if client_id in rnd.accepted or client_id in rnd.dropped or client_id in rnd.uploading:
            return None
        if client_id in rnd.assigned:
            log.info("round=%d client=%s asked again before delivering: its task reply was lost or its work failed; "
                     "sending the task again", rnd.number, client_id)
        rnd.assigned.add(client_id)
        return pb.Task(kind=pb.Task.TRAIN, round=rnd.number, version=rnd.base_version,
                       config=self._train_config(rnd, client_id))

    def _train_config(self, rnd: RoundState, client_id: str = "") -> pb.TrainConfig:
        c = self.config
        values = self.strategy.configure_client({
            "local_epochs": float(c.local_epochs if c.local_epochs is not None else self.task.defaults.local_epochs),
            "batch_size": float(c.batch_size or self.task.defaults.batch_size),
            "learning_rate": float(c.learning_rate or self.task.defaults.learning_rate),
            "proximal_mu": 0.0, "clip_norm": 0.0, "noise_multiplier": 0.0,
        })
        options = dict(c.train_options)
        options["seed"] = str(c.seed * 1_000_003 + rnd.number)
        options.update(compression_options(c.upload_codec, c.topk_fraction, c.error_feedback, c.incremental_download))
        config = pb.TrainConfig(local_epochs=int(values["local_epochs"]), batch_size=int(values["batch_size"]),
                                learning_rate=values["learning_rate"], proximal_mu=values["proximal_mu"],
                                clip_norm=values["clip_norm"], noise_multiplier=values["noise_multiplier"],
                                options=options)
        return apply_client_settings(config, c.client_settings.get(client_id))

    def open_download(self, session_id: str, version: int, have_version: int = 0) -> DownloadStream:
        with self.cond:
            session = self._session(session_id)
            if version != self.version:
                raise errors.stale(f"version {version} is not served; the current global version is {self.version}")
            served = self.publisher.serve(version, have_version)
            manifest, buffers = served.manifest, served.buffers
            rnd = self.round or self.evaluation
            session.held_version = version
        header = pb.ModelHeader(version=version, manifest=manifest, incremental=served.incremental,
                                base_version=served.base_version, masked=self.publisher.masked)
        crc = Crc32()

        def chunks() -> Iterator[memoryview | bytes]:
            for piece in iter_chunks(buffers, self.config.chunk_bytes):
                crc.update(piece)
                yield piece
            if rnd is not None:
                with self.cond:
                    rnd.bytes_down += crc.nbytes

        return DownloadStream(header, chunks(), crc)

    def begin_upload(self, header: pb.UpdateHeader) -> UploadSink:
        with self.cond:
            session = self._session(header.session_id)
            client = session.client_id
            rnd = self.round
            if rnd is None or rnd.closed or rnd.number != header.round:
                current = f"round {rnd.number} is open" if rnd and not rnd.closed else "no round is open"
                raise errors.stale(f"client {client} sent an update for round {header.round}; {current}")
            if not rnd.is_selected(client):
                raise errors.denied(f"client {client} was not sampled for round {rnd.number}")
            if header.base_version != rnd.base_version:
                raise errors.stale(f"client {client} trained on version {header.base_version}; "
                                   f"round {rnd.number} started from version {rnd.base_version}")
            if client in rnd.accepted:
                if header.upload_id and rnd.upload_ids.get(client) == header.upload_id:
                    raise _Duplicate()
                raise errors.already_exists(f"client {client} already delivered its update for round {rnd.number}")
            if client in rnd.uploading:
                raise errors.aborted(f"client {client} already has an upload in flight for round {rnd.number}")
            _check_update_fields(client, header, session.num_examples)
            allowed = accepted_codecs(session.upload_codec)
            try:
                layout = check_manifest(header.manifest, self.reference, allowed, f"client {client}",
                                        self.max_update_bytes)
            except ManifestError as exc:
                code = errors.exhausted if "at most" in str(exc) else errors.invalid
                raise code(str(exc)) from None
            rnd.uploading[client] = header.upload_id
            rnd.dropped.pop(client, None)
        metrics = {k: float(v) for k, v in header.metrics.items()}
        info = UpdateInfo(client, header.round, header.base_version, int(header.num_examples), metrics, header.upload_id)
        writer = SpoolWriter(self.spool, layout, int(header.manifest.total_bytes))
        return UploadSink(client, info, writer, rnd)

    def validated_update(self, sink: UploadSink, trailer: pb.Trailer) -> SpooledUpdate:
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

    def finish_upload(self, sink: UploadSink, trailer: pb.Trailer) -> None:
        """Validates the whole stream, folds it into the running aggregate, and records it as accepted."""
        client, rnd = sink.client_id, sink.round_state
        update = self.validated_update(sink, trailer)
        with self.cond:
            if rnd.closed:
                rnd.uploading.pop(client, None)
                update.delete()
                raise errors.stale(f"round {rnd.number} closed before client {client}'s update was complete")
            rnd.folding += 1
        try:
            if rnd.aggregator is not None:
                rnd.aggregator.add(update, self.strategy.weight(sink.info), self.strategy.scale(sink.info), key=client)
        finally:
            with self.cond:
                rnd.folding -= 1
                rnd.uploading.pop(client, None)
                rnd.accepted[client] = update
                rnd.upload_ids[client] = sink.info.upload_id
                rnd.dropped.pop(client, None)
                rnd.bytes_up += sink.writer.total_bytes
                self.cond.notify_all()
        log.info("round=%d client=%s update accepted (%d examples, %.1f MB)", rnd.number, client,
                 sink.info.num_examples, sink.writer.total_bytes / 1e6)

    def abort_upload(self, sink: UploadSink, reason: str) -> None:
        sink.writer.discard()
        with self.cond:
            rnd = sink.round_state
            if rnd.uploading.get(sink.client_id) == sink.info.upload_id:
                rnd.uploading.pop(sink.client_id, None)
                rnd.drop(sink.client_id, reason)
            self.cond.notify_all()
        log.warning("round=%d client=%s upload dropped: %s", rnd.number, sink.client_id, reason)

    # ----- the round loop --------------------------------------------------------------------------------------

    def _sample(self, number: int, attempt: int) -> list[str]:
        connected = self.sessions.client_ids()
        k = self.config.clients_per_round or len(connected)
        rng = random.Random(f"{self.config.seed}/{number}/{attempt}")
        return sorted(rng.sample(connected, min(k, len(connected))))

    def _wait_for_clients(self, needed: int) -> bool:
        deadline = time.monotonic() + self.config.wait_for_clients
        with self.cond:
            while len(self.sessions) < needed:
                self._expire()
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.finished:
                    return False
                self.cond.wait(timeout=min(remaining, 1.0))
            return True

    def _expire(self) -> None:
        for session in self.sessions.expire():
            log.warning("client=%s session expired (no contact for %.0f s)", session.client_id, self.config.session_timeout)
            if self.round is not None:
                self.round.drop(session.client_id, f"no contact for {self.config.session_timeout:.0f} s")

    def run(self) -> None:
        """Runs rounds until the configured count, then tells every client to finish."""
        try:
            while self.completed_rounds < self.config.rounds and not self.finished:
                self._run_round(self.completed_rounds + 1)
        finally:
            self.finish()

    def _run_round(self, number: int) -> None:
        attempt = 0
        while not self.finished:
            attempt += 1
            needed = max(self.config.min_clients, self.config.clients_per_round, 1)
            if not self._wait_for_clients(needed):
                if self.finished:
                    return
                raise RuntimeError(f"fewer than {needed} clients connected within {self.config.wait_for_clients:.0f} s")
            self._wait_for_returning_clients()
            if self._strategy_ends_run(number, attempt):
                return
            with self.cond:
                selected = self._sample(number, attempt)
                streaming = self.strategy.streaming
                rnd = RoundState(number, attempt, self.version, selected,
                                 time.monotonic() + self.config.round_timeout,
                                 StreamingAggregator(self.global_state, selected if self.config.reproducible else None)
                                 if streaming else None)
                self.round = rnd
                self.cond.notify_all()
            log.info("round=%d attempt=%d started with %d client(s): %s", number, attempt, len(selected), ", ".join(selected))
            self._wait_round(rnd)
            if self.stopping:
                log.warning("round=%d attempt=%d abandoned (%s): %d update(s) discarded; a restart with the same "
                            "run directory redoes this round", number, attempt, self.stopping, len(rnd.accepted))
                self._discard(rnd)
                return
            if len(rnd.accepted) >= self.config.min_clients:
                if self._close_round(rnd):
                    return
            else:
                log.warning("round=%d attempt=%d got %d update(s), fewer than min_clients=%d; retrying", number,
                            attempt, len(rnd.accepted), self.config.min_clients)
            self._discard(rnd)

    def report_evaluation(self, report: pb.EvaluationReport) -> None:
        with self.cond:
            client = self._session(report.session_id).client_id
            ev = self.evaluation
            if ev is None or ev.number != report.round or ev.version != report.version:
                raise errors.stale(f"client {client} reported an evaluation of round {report.round} "
                                   f"(version {report.version}); no such evaluation is open")
            if client not in ev.assigned:
                raise errors.denied(f"client {client} was not asked to evaluate round {ev.number}")
            metrics = {k: float(v) for k, v in report.metrics.items()}
            if report.num_examples < 0 or not all(map(math.isfinite, metrics.values())) or len(metrics) > MAX_METRICS:
                raise errors.invalid(f"client {client} sent an evaluation with negative examples, non-finite or "
                                     f"more than {MAX_METRICS} metrics")
            ev.reports[client] = (int(report.num_examples), metrics)
            self.cond.notify_all()

    def _federated_evaluation(self, number: int) -> dict:
        """Asks the round's connected clients (sampled like a training round) to evaluate the new version."""
        with self.cond:
            ev = EvaluationRound(number, self.version, self._sample(number, 0),
                                 time.monotonic() + self.config.round_timeout)
            self.evaluation = ev
            self.cond.notify_all()
            while not ev.complete() and not self.finished and time.monotonic() < ev.deadline:
                self._expire()
                self.cond.wait(timeout=min(1.0, max(0.0, ev.deadline - time.monotonic())))
            self.evaluation = None
            self.cond.notify_all()
        return {**ev.metrics(), "federated_eval_bytes_down": ev.bytes_down}

    def _strategy_ends_run(self, number: int, attempt: int) -> bool:
        """Asks the strategy whether round `number` may start (DP: it would not pass --target-epsilon)."""
        with self.cond:
            reason = self.strategy.begin_round(number, len(self._sample(number, attempt)), len(self.sessions))
            if reason:
                self.strategy_stop = reason
        if not reason:
            return False
        log.warning("round=%d not started: %s", number, reason)
        self.finish()
        return True

    def _wait_round(self, rnd: RoundState) -> None:
        with self.cond:
            while not rnd.complete() and not self.finished:
                self._expire()
                remaining = rnd.deadline - time.monotonic()
                if remaining <= 0:
                    for client in rnd.outstanding():
                        rnd.drop(client, f"round deadline of {self.config.round_timeout:.0f} s passed")
                    break
                self.cond.wait(timeout=min(remaining, 1.0))
            rnd.closed = True
            while rnd.folding:
                self.cond.wait(timeout=1.0)

    def _wait_for_returning_clients(self) -> None:
        """After a restart, waits (up to one round timeout) for the clients of the checkpointed run to rejoin,
        so the resumed round samples from the same clients as an uninterrupted run would."""
        if not self._returning:
            return
        deadline = time.monotonic() + min(self.config.round_timeout, self.config.wait_for_clients)
        with self.cond:
            while not self.finished and time.monotonic() < deadline:
                missing = self._returning - set(self.sessions.client_ids())
                if not missing:
                    break
                self._expire()
                self.cond.wait(timeout=min(1.0, max(0.0, deadline - time.monotonic())))
            missing = self._returning - set(self.sessions.client_ids())
            self._returning = set()
        if missing:
            log.warning("resumed without %d client(s) of the previous run: %s", len(missing), ", ".join(sorted(missing)))

    def _discard(self, rnd: RoundState) -> None:
        with self.cond:
            for update in rnd.accepted.values():
                update.delete()
            self.round = None

    def _close_round(self, rnd: RoundState) -> bool:
        """Aggregates and publishes the round; False (nothing applied) when the updates cannot be aggregated into
        a finite model, so the round is retried. Evaluation, the metrics line and the checkpoint follow in the
        round's epilogue, beside the next round."""
        self.epilogue.wait()  # the previous round's checkpoint has read the strategy state this round changes
        updates = [rnd.accepted[c] for c in sorted(rnd.accepted)]
        seed_round(self.config.seed, rnd.number)
        try:
            delta = self.strategy.aggregate(RoundUpdates(self.global_state, updates, rnd.aggregator))
            new_state = self.strategy.apply(self.global_state, delta)
            check_finite(new_state, f"round {rnd.number}'s aggregate of {', '.join(sorted(rnd.accepted))}")
        except ValueError as exc:
            log.error("round=%d attempt=%d not applied: %s; the round is retried", rnd.number, rnd.attempt, exc)
            return False
        masks_changed = self.pruning.after_round(rnd.number, new_state)
        published = self.publisher.prepare(self.version + 1, new_state, self.pruning.masked, masks_changed)
        infos = [u.info for u in updates if u.info is not None]
        train_loss = mean_train_loss(infos)
        with self.cond:
            self.global_state = OrderedDict((k, v.contiguous()) for k, v in new_state.items())
            self.version += 1
            self.completed_rounds = rnd.number
            self.publisher.commit(published, self.pruning.masked)
            self.round = None
            self.cond.notify_all()
            connected = self.sessions.client_ids()
        for update in updates:
            update.delete()
        record = {
            "round": rnd.number, "version": self.version, "attempt": rnd.attempt, "clients": len(updates),
            "selected": len(rnd.selected), "train_loss": train_loss, "eval_loss": None, "eval_accuracy": None,
            "bytes_up": rnd.bytes_up, "bytes_down": rnd.bytes_down,
            "seconds": round(time.monotonic() - rnd.started, 4), "dropped": dict(sorted(rnd.dropped.items())),
            "accepted": sorted(rnd.accepted), **client_privacy(infos),
            **self.strategy.round_metrics(), **self.pruning.metrics(self.global_state), **self.publisher.round_metrics(),
        }
        # Strategy tensors change only in the next round's aggregate, which first waits for this epilogue.
        checkpoint = Checkpoint(self.global_state, self.version, self.completed_rounds, self.strategy.state_dict(),
                                {"clients": connected})
        if self.config.federated_eval:
            self._finish_round(record, checkpoint)  # clients evaluate this version before they train on it
        else:
            self.epilogue.submit(lambda: self._finish_round(record, checkpoint))
        return True

    def _finish_round(self, record: dict, checkpoint: Checkpoint) -> None:
        """The round's epilogue: evaluation, its metrics line, its checkpoint, the on_round callback."""
        number = record["round"]
        evaluation = self.evaluate_after(number, checkpoint.global_state)
        record.update({f"eval_{key}": value for key, value in evaluation.items()})  # eval_perplexity, ...
        if self.config.federated_eval:
            record.update(self._federated_evaluation(number))
        self.runlog.append(record)
        save_checkpoint(self.run_dir, checkpoint)
        log.info("round=%d closed: %d update(s), %s", number, record["clients"], describe(evaluation))
        if self.on_round is not None:
            self.on_round(record)

    def _epilogue_failed(self, exc: BaseException) -> None:
        log.error("round epilogue failed (%s: %s); the run stops after the current round's transfers",
                  type(exc).__name__, exc)
        self.stop(f"the server could not finish a round: {type(exc).__name__}: {exc}")

    def evaluate(self, state: OrderedDict[str, torch.Tensor]) -> dict[str, float]:
        self.model.load_state_dict(state, assign=True)
        return self.task.evaluate(self.model, self.task.test_data, torch.device("cpu"))

    def evaluate_after(self, number: int, state: OrderedDict[str, torch.Tensor]) -> dict[str, float | None]:
        """Server-side evaluation of round (or version) `number`: every eval_every-th one and the last one;
        loss and accuracy are None for the others."""
        if number % max(1, self.config.eval_every) and number < self.config.rounds:
            self.model.load_state_dict(state, assign=True)  # no copy; lets the previous version's tensors go
            return {"loss": None, "accuracy": None}
        return self.evaluate(state)

    def stop(self, reason: str) -> None:
        """Ends the run early (SIGTERM): the open round is abandoned and polling clients are told to finish.

        The round loop notices, and its run() writes the final model once it is out of any round."""
        with self.cond:
            self.stopping = reason
            self.finished = True
            if self.round is not None:
                self.round.closed = True
            self.cond.notify_all()
        log.warning("stopping: %s", reason)

    def finish(self) -> None:
        try:
            self.epilogue.wait()
        finally:
            with self.cond:
                self.finished = True
                if self.round is not None:
                    self.round.closed = True
                self.cond.notify_all()
            self.spool.close()
            self.runlog.write_model(self.global_state)

    def wait_clients_gone(self, timeout: float) -> None:
        """After finishing, gives connected clients a moment to fetch their FINISH task."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.sessions) and time.monotonic() < deadline:
                self._expire()
                self.cond.wait(timeout=0.2)


MAX_METRICS = 64
MAX_LABEL_CHARS = 128


def _check_update_fields(client: str, header: pb.UpdateHeader, joined_examples: int) -> None:
    """Bounds on the header's free-form fields, so a client cannot bloat the run log or poison its numbers."""
    if not 0 <= header.num_examples <= joined_examples:
        raise errors.invalid(f"client {client} reported num_examples={header.num_examples} in its update; "
                             f"it joined with {joined_examples}, the most an update may claim")
    if len(header.upload_id) > MAX_LABEL_CHARS:
        raise errors.invalid(f"client {client} sent a {len(header.upload_id)}-char upload_id; at most {MAX_LABEL_CHARS}")
    if len(header.metrics) > MAX_METRICS:
        raise errors.invalid(f"client {client} sent {len(header.metrics)} metrics; at most {MAX_METRICS}")
    for key, value in header.metrics.items():
        if len(key) > MAX_LABEL_CHARS or not math.isfinite(value):
            raise errors.invalid(f"client {client} sent metric {key[:40]!r}={value}; names are at most "
                                 f"{MAX_LABEL_CHARS} chars and values must be finite")


def describe(evaluation: Mapping[str, float | None]) -> str:
    """The log's words for a round's server-side evaluation."""
    if evaluation.get("accuracy") is None:
        return "not evaluated (--eval-every)"
    return f"eval accuracy {evaluation['accuracy']:.4f}, loss {evaluation['loss']:.4f}"


def seed_round(seed: int, number: int) -> None:
    """Seeds the server's global RNGs from (seed, round), so aggregation randomness is the same after a resume."""
    value = seed * 1_000_003 + number
    torch.manual_seed(value)
    random.seed(value)


def mean_train_loss(infos: list[UpdateInfo]) -> float | None:
    """Example-weighted training loss of the clients that reported one (DP-SGD clients do not)."""
    reported = [i for i in infos if "train_loss" in i.metrics]
    weight = sum(i.num_examples for i in reported)
    return sum(i.metrics["train_loss"] * i.num_examples for i in reported) / weight if weight else None


def client_privacy(infos: list[UpdateInfo]) -> dict[str, float]:
    """The largest ε that clients training with DP-SGD reported for their own data (none: no key)."""
    spent = [i.metrics["dp_sgd_epsilon"] for i in infos if "dp_sgd_epsilon" in i.metrics]
    return {"dp_sgd_epsilon_max": max(spent)} if spent else {}


def check_finite(state: Mapping[str, torch.Tensor], what: str) -> None:
    for name, tensor in state.items():
        if not all_finite(tensor):
            raise ValueError(f"{what} holds NaN or Inf in {name}; the global model was left unchanged")


class _Duplicate(Exception):
    """An upload whose upload_id was already accepted this round: answered as a success, counted once."""


Duplicate = _Duplicate
