"""A federated client process: join, then loop on tasks (download, train locally, upload the delta)."""

from __future__ import annotations

import inspect
import logging
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Mapping

import grpc
import torch
from torch.utils.data import TensorDataset

from fedstream.client.connection import (LOST_SERVER, POLL_TIMEOUT_S, Backoff, CoordinatorStub, WaitPacer, open_channel,
                                         with_retry)
from fedstream.client.handshake import diagnose_handshake
from fedstream.client.device import resolve_device
from fedstream.client.feedback import ErrorFeedback
from fedstream.client.held_model import HeldModel, delta_from
from fedstream.client.masks import keep_pruned, masks_for
from fedstream.client.privacy import privatize_delta
from fedstream.client.device_copy import delta_into, load_state, local_state
from fedstream.client.secure_aggregation import CAPABILITY as SECAGG, SecureAggregationClient, exit_for_test
from fedstream.client.dp_sgd import DpSgdSettings, DpSgdTrainer, check_model
from fedstream.client.server_checks import (BadAnswer, BadAnswerCounter, ClientLimits, ModelExpectation,
                                            check_join_reply, check_task, loggable, seed_of, torch_seed)
from fedstream.client.transfer import TransferError, download, upload
from fedstream.common.allocator import tune_malloc
from fedstream.common.codecs.registry import available_codecs
from fedstream.common.codecs.plan import ERROR_FEEDBACK, INCREMENTAL, chooser, topk_fraction_of
from fedstream.common.training.partition import partition_indices
from fedstream.common.proto import coordinator_pb2 as pb
from fedstream.common.secagg import wire as secagg_wire
from fedstream.common.secagg.errors import SecAggError
from fedstream.common.tasks import Task, TrainSettings
from fedstream.common.wire.manifest import reference_of
from fedstream.common.wire.protocol import LONG_POLL_MS, PROTOCOL_VERSION
from fedstream.common.wire.tensors import state_nbytes

log = logging.getLogger("fedstream.client")
UPLOAD_ATTEMPTS = 4
UPLOAD_RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED}


class Stopped(Exception):
    """SIGTERM or SIGINT reached a client process: it leaves the federation instead of vanishing."""


@dataclass
class ClientConfig:
    server: str
    client_id: str
    partition: tuple[int, int] = (0, 1)
    partition_scheme: str = "iid"
    alpha: float = 0.5
    partition_seed: int = 0
    device: str = "auto"
    local_epochs: int | None = None
    codecs: list[str] = field(default_factory=available_codecs)
    connect_timeout: float = 600.0
    credentials: grpc.ChannelCredentials | None = None
    server_name: str | None = None
    token: str = ""
    slowdown: float = 1.0
    save_updates: Path | None = None
    upload_chunk_delay: float = 0.0
    amp: str = "off"
    dp_sgd: DpSgdSettings | None = None
    limits: ClientLimits = field(default_factory=ClientLimits)


def _subset_tensors(data: TensorDataset, indices: torch.Tensor) -> TensorDataset:
    return TensorDataset(*(t[indices] for t in data.tensors))


class FederatedClient:
    def __init__(self, task: Task, config: ClientConfig) -> None:
        self.task = task
        self.config = config
        self.device = resolve_device(config.device)
        i, n = config.partition
        split = task.client_split(i, n, config.partition_scheme, config.alpha, config.partition_seed)
        self.data = split.train
        self.personal_test = split.personal_test
        self.eval_data = _subset_tensors(task.test_data, partition_indices(task.test_data.tensors[1], i, n, "iid",
                                                                           seed=config.partition_seed))
        self.model = task.make_model().to(self.device)
        if config.dp_sgd is not None:
            check_model(self.model)
        self.channel = open_channel(config.server, config.credentials, config.server_name)
        self.stub = CoordinatorStub(self.channel)
        self.session: pb.JoinReply | None = None
        self._stop = threading.Event()
        self.dp_sgd = DpSgdTrainer(config.dp_sgd) if config.dp_sgd is not None else None
        self._run_over = threading.Event()  # a heartbeat said the run ended: stop training, do not upload
        self._run_over_message = ""
        self.rounds_trained = 0
        self.held = HeldModel()
        self.feedback = ErrorFeedback()
        self._spare: torch.Tensor | None = None  # last download buffer, reused when nothing refers to it
        own = self.task.federated_state(self.model)  # what the server sends: the federated tensors
        self.expected = ModelExpectation(reference_of(own), list(config.codecs),
                                         config.limits.model_bytes_for(state_nbytes(own)))
        self.bad_answers = BadAnswerCounter(config.client_id, config.limits.max_bad_answers,
                                            config.limits.retry_backoff)
        self.secagg = SecureAggregationClient()

    # ----- session ------------------------------------------------------------------------------------------

    def join(self) -> pb.JoinReply:
        """Joins until the server's reply passes check_join_reply (each bad reply counts as a bad answer)."""
        request = pb.JoinRequest(client_id=self.config.client_id, protocol_version=PROTOCOL_VERSION,
                                 device=str(self.device), codecs=self.config.codecs, token=self.config.token,
                                 num_examples=len(self.data), capabilities=[SECAGG])
        diagnose = None
        if self.config.credentials is not None:
            diagnose = partial(diagnose_handshake, target=self.config.server, server_name=self.config.server_name)
        while True:
            reply = with_retry(lambda: self.stub.Join(request, timeout=10), f"join as {self.config.client_id}",
                               self.config.connect_timeout, diagnose=diagnose)
            try:
                self.session = check_join_reply(reply, self.config.codecs)
                break
            except BadAnswer as exc:
                self.bad_answers.record(exc)
        log.info("client=%s joined run %s (upload codec %s; training on %s, amp %s)", self.config.client_id,
                 self.session.run_id, self.session.upload_codec, self.device, self.config.amp)
        tune_malloc(self.session.chunk_bytes)
        return self.session

    def _heartbeats(self) -> None:
        while not self._stop.wait(self.session.heartbeat_seconds if self.session else 5):
            session = self.session
            if session is None:
                continue
            try:
                reply = self.stub.Heartbeat(pb.HeartbeatRequest(session_id=session.session_id), timeout=5)
            except grpc.RpcError:
                continue
            if reply.finished:
                self._run_over_message = reply.finish_message
                self._run_over.set()

    # ----- the loop -------------------------------------------------------------------------------------------

    def run(self) -> int:
        """Works until the server says FINISH; returns the process exit code."""
        beat = threading.Thread(target=self._heartbeats, name="heartbeat", daemon=True)
        previous = _raise_on_stop_signals()
        try:
            self.join()
            beat.start()
            backoff, pacer = Backoff(), WaitPacer()
            while True:
                if self._run_over.is_set():
                    return self._finish(self._run_over_message)
                asked = time.monotonic()
                try:
                    task = self.stub.GetTask(pb.TaskRequest(session_id=self.session.session_id, wait_ms=LONG_POLL_MS),
                                             timeout=POLL_TIMEOUT_S)
                    backoff.reset()
                    check_task(task, self.config.limits, self.config.local_epochs)
                except grpc.RpcError as exc:
                    if not self._run_over.is_set():
                        self._recover(exc, backoff)
                    continue
                except BadAnswer as exc:
                    self.bad_answers.record(exc)
                    continue
                if task.kind == pb.Task.FINISH:
                    return self._finish(task.message)
                if task.kind == pb.Task.WAIT:
                    time.sleep(pacer.delay(task.retry_after_ms, time.monotonic() - asked, LONG_POLL_MS / 1000))
                    continue
                pacer.reset()
                try:
                    if task.kind == pb.Task.EXCHANGE:
                        self.exchange_round(task)
                    else:
                        self.train_round(task) if task.kind == pb.Task.TRAIN else self.evaluate_round(task)
                    self.bad_answers.reset()
                except grpc.RpcError as exc:
                    if not self._run_over.is_set():
                        self._recover(exc, backoff)
                except (BadAnswer, TransferError) as exc:
                    self.bad_answers.record(f"round {task.round}: {exc}")
                if self._run_over.is_set():
                    return self._finish(self._run_over_message)
        except Stopped as stop:
            _restore_signals(previous)
            log.info("client=%s stopped by %s; leaving the federation", self.config.client_id, stop)
            self._leave(f"stopped by {stop}")
            return 0
        finally:
            _restore_signals(previous)
            self._stop.set()
            if beat.is_alive():
                beat.join(timeout=10)
            self.channel.close()

    def _finish(self, message: str) -> int:
        """Leaves the federation after the server ended the run; the process exits 0."""
        log.info("client=%s finished: %s", self.config.client_id, loggable(message))
        self._leave("finished")
        return 0

    def _leave(self, reason: str) -> None:
        """Tells the server this client is gone (best effort: it may be gone itself)."""
        if self.session is None:
            return
        try:
            self.stub.Leave(pb.LeaveRequest(session_id=self.session.session_id, reason=reason), timeout=5)
        except grpc.RpcError:
            pass

    def _recover(self, exc: grpc.RpcError, backoff: Backoff) -> None:
        code = exc.code() if hasattr(exc, "code") else None
        if code == grpc.StatusCode.UNAUTHENTICATED:
            delay = backoff.next_delay() if backoff.attempt else 0.0  # the first rejoin at once, then backed off
            backoff.attempt = max(backoff.attempt, 1)
            log.info("client=%s session no longer valid (%s); joining again", self.config.client_id,
                     loggable(exc.details() or ""))
            time.sleep(delay)
            self.join()
            return
        if code in LOST_SERVER:
            delay = backoff.next_delay()
            log.info("client=%s lost the server (%s); retrying in %.1f s", self.config.client_id,
                     code.name if code else "", delay)
            time.sleep(delay)
            try:
                self.stub.Heartbeat(pb.HeartbeatRequest(session_id=self.session.session_id), timeout=5)
            except grpc.RpcError as again:
                if again.code() == grpc.StatusCode.UNAUTHENTICATED:
                    self.join()
            return
        delay = backoff.next_delay()
        log.warning("client=%s server refused: %s %s; asking again in %.2f s", self.config.client_id,
                    code.name if code else "", loggable(exc.details() or ""), delay)
        time.sleep(delay)

    def settings_for(self, config: pb.TrainConfig) -> TrainSettings:
        d = self.task.defaults
        epochs = self.config.local_epochs if self.config.local_epochs is not None else config.local_epochs
        return TrainSettings(local_epochs=int(epochs), batch_size=int(config.batch_size or d.batch_size),
                             learning_rate=float(config.learning_rate or d.learning_rate),
                             proximal_mu=float(config.proximal_mu), max_steps=d.max_steps,
                             slowdown=float(config.options.get("slowdown", self.config.slowdown)), amp=self.config.amp)

    def evaluate_round(self, task: pb.Task) -> None:
        """Scores the task's global version on this client's share of the test data and reports it."""
        got = download(self.stub, self.session.session_id, task.version, expect=self.expected,
                       limits=self.config.limits)
        load_state(self.model, got.state, self.task)
        metrics = self.task.evaluate(self.model, self.eval_data, self.device)
        self.stub.ReportEvaluation(pb.EvaluationReport(session_id=self.session.session_id, round=task.round,
                                                       version=task.version, num_examples=len(self.eval_data),
                                                       metrics=metrics), timeout=30)
        log.info("client=%s round=%d evaluated version %d: accuracy %.4f", self.config.client_id, task.round,
                 task.version, metrics.get("accuracy", float("nan")))

    def exchange_round(self, task: pb.Task) -> None:
        """One phase of a multi-phase round (secure aggregation); the masked-input phase trains and uploads."""
        cid = self.config.client_id
        try:
            if task.phase == secagg_wire.MASKED_INPUT:
                self.secagg.receive_shares(task.payload)
                self.train_round(task)
            else:
                answer = self.secagg.answer(task.phase, task.payload)
                self.stub.Exchange(pb.ExchangeRequest(session_id=self.session.session_id, round=task.round,
                                                      phase=task.phase, payload=answer), timeout=30)
        except SecAggError as exc:
            self.secagg.forget()
            log.warning("client=%s round=%d leaves secure aggregation in phase %s: %s", cid, task.round, task.phase,
                        exc)
            self.stub.Exchange(pb.ExchangeRequest(session_id=self.session.session_id, round=task.round,
                                                  phase=secagg_wire.ABORT, payload=str(exc)[:200].encode()),
                               timeout=30)
            return
        exit_for_test(task.phase)

    def train_round(self, task: pb.Task) -> None:
        cid = self.config.client_id
        started = time.perf_counter()
        run_id, options = self.session.run_id, task.config.options

        spare, self._spare = self._spare, None

        def fetch(have_version: int):
            return download(self.stub, self.session.session_id, task.version, have_version=have_version,
                            pin_memory=self.device.type == "cuda", reuse=spare, expect=self.expected,
                            limits=self.config.limits)

        base, got = self.held.receive(fetch(self.held.have_version(run_id)), run_id, options.get(INCREMENTAL) == "1",
                                      lambda: fetch(0))
        load_state(self.model, base, self.task)
        before = self._personal_eval("personal_global_")
        masks = masks_for(base, got.masked)
        settings = self.settings_for(task.config)
        seed = torch_seed(seed_of(task.config.options), self.config.partition[0])
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        with keep_pruned(self.model, masks):
            metrics = self.local_train(settings, generator,
                                       base if settings.proximal_mu > 0 else None) if len(self.data) else {}
        if self._run_over.is_set():
            log.info("client=%s round=%d training stopped: the run ended", cid, task.round)
            return
        metrics = {**metrics, **before, **self._personal_eval("personal_")}
        local = local_state(self.task, self.model, base)
        delta = delta_from(base, local) if self.held.state is base else self._delta_into(base, local)
        if task.config.clip_norm > 0:
            privatize_delta(delta, task.config.clip_norm, task.config.noise_multiplier)
        if self.config.save_updates is not None:
            self._save_update(task, delta)
        if task.kind == pb.Task.EXCHANGE:
            self._upload_masked(task, delta, started)
            return
        metrics = {**metrics, "train_seconds": time.perf_counter() - started}
        self.feedback.bind(run_id, options.get(ERROR_FEEDBACK, "1") == "1")
        encoded = self.feedback.encode(delta, chooser(self.session.upload_codec, got.masked, topk_fraction_of(options)),
                                       masks)
        upload_id = uuid.uuid4().hex
        log.info("client=%s round=%d uploading its update (upload_id %s)", cid, task.round, upload_id[:8])
        for attempt in range(UPLOAD_ATTEMPTS):
            try:
                reply, nbytes = upload(self.stub, self.session.session_id, task.round, task.version, delta,
                                       len(self.data), metrics, self.session.upload_codec, self.session.chunk_bytes,
                                       upload_id=upload_id, chunk_delay=self.config.upload_chunk_delay,
                                       encoded=(encoded.manifest, encoded.buffers),
                                       admission=self.session.upload_admission)
                break
            except grpc.RpcError as exc:
                # ABORTED: the server still holds this client's previous (broken) stream; the same upload_id is
                # retried, so an attempt the server did accept is counted once.
                if exc.code() not in UPLOAD_RETRYABLE or attempt == UPLOAD_ATTEMPTS - 1:
                    raise
                time.sleep(0.5 * 2 ** attempt)
        self.feedback.commit(encoded)
        if self.held.state is not base and not encoded.residual:
            self._spare = got.buffer  # nothing refers to this round's download any more
        self.rounds_trained += 1
        log.info("client=%s round=%d uploaded %.1f MB in %.2f s (%s)", cid, task.round, nbytes / 1e6,
                 time.perf_counter() - started, "duplicate" if reply.duplicate else "accepted")
        if encoded.residual:
            log.info("client=%s round=%d error feedback carries a residual of norm %.4g to the next round", cid,
                     task.round, encoded.residual_norm())

    def _personal_eval(self, prefix: str) -> dict[str, float]:
        """The model as it is now (with this client's local-only modules) scored on this client's own held-out
        data, each metric named prefix + eval_ + key; nothing when the task has no such data, or under DP-SGD
        (the held-out examples are not covered by its guarantee, so their scores do not leave the client)."""
        if self.personal_test is None or not len(self.personal_test) or self.dp_sgd is not None:
            return {}
        scores = self.task.evaluate(self.model, self.personal_test, self.device)
        return {f"{prefix}eval_{key}": float(value) for key, value in scores.items()}

    def _upload_masked(self, task: pb.Task, delta: Mapping[str, torch.Tensor], started: float) -> None:
        """Secure aggregation: the masked vector, computed window by window, as one upload (no metrics: the
        server sees nothing of one client but its masked words). Sent once: a retry would re-encode it."""
        manifest, windows = self.secagg.masked_upload(delta, len(self.data))
        reply, nbytes = upload(self.stub, self.session.session_id, task.round, task.version, delta, len(self.data), {},
                               "raw", self.session.chunk_bytes, encoded=(manifest, windows),
                               chunk_delay=self.config.upload_chunk_delay, admission=self.session.upload_admission)
        self.rounds_trained += 1
        log.info("client=%s round=%d uploaded its masked update, %.1f MB in %.2f s (%s)", self.config.client_id,
                 task.round, nbytes / 1e6, time.perf_counter() - started, "accepted" if reply.accepted else "refused")

    def local_train(self, settings: TrainSettings, generator: torch.Generator,
                    global_params: Mapping[str, torch.Tensor] | None) -> dict[str, float]:
        """Trains self.model on this client's data (a cluster client, client/distributed.py, trains with DDP)."""
        if self.dp_sgd is not None:
            metrics = self.dp_sgd.train(self.task, self.model, self.data, settings, self.device,
                                        interrupt=self._run_over)
            log.info("client=%s DP-SGD: ε = %.3f at δ = %g after %d step(s) in all", self.config.client_id,
                     metrics["dp_sgd_epsilon"], self.dp_sgd.settings.delta, self.dp_sgd.steps)
            return metrics
        extra = {"interrupt": self._run_over} if _takes_interrupt(self.task.train) else {}
        return self.task.train(self.model, self.data, settings, self.device, generator, global_params=global_params,
                               **extra)

    def _save_update(self, task: pb.Task, delta: Mapping[str, torch.Tensor]) -> None:
        """Keeps a copy of what is uploaded (round, base version, examples) for audits and tests."""
        from safetensors.torch import save_file

        self.config.save_updates.mkdir(parents=True, exist_ok=True)
        path = self.config.save_updates / f"{self.config.client_id}-round{task.round}.safetensors"
        save_file({k: v.contiguous() for k, v in delta.items()}, str(path),
                  metadata={"round": str(task.round), "base_version": str(task.version),
                            "num_examples": str(len(self.data)), "client_id": self.config.client_id})

    def _delta_into(self, global_state: Mapping[str, torch.Tensor], local: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
        """local − global, written over the downloaded global tensors (no second model-sized buffer); on a GPU
        computed on the device and copied back asynchronously into the pinned download buffer."""
        return delta_into(global_state, local)


def _takes_interrupt(train: Callable[..., object]) -> bool:
    """Whether a task's train accepts interrupt= (a Task subclass written before it existed does not)."""
    try:
        parameters = inspect.signature(train).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "interrupt" or p.kind == p.VAR_KEYWORD for p in parameters)


def _raise_on_stop_signals() -> dict[int, object]:
    """SIGTERM/SIGINT raise Stopped in the main thread (elsewhere, e.g. a client run in a thread, nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def stop(signum: int, _frame: object) -> None:
        raise Stopped(signal.Signals(signum).name)

    return {signum: signal.signal(signum, stop) for signum in (signal.SIGTERM, signal.SIGINT)}


def _restore_signals(previous: dict[int, object]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)
    previous.clear()
