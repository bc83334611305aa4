"""Secure aggregation (SecAgg+, Bell et al. 2020): a synchronous round in four phases; the server learns only the sum.

Each attempt samples clients like `--mode sync`, numbers them 1..N and runs the phase-1 protocol
(`common/secagg/`) over EXCHANGE tasks: advertise keys → share keys → masked input (the client trains, then
uploads its masked vector as an ordinary update of one int32/int64 tensor, `upload_reference`) → unmasking.
Each masked upload is folded from its spool, window by window, into the protocol's one modular accumulator as
it is accepted; the spool file is then released. After unmasking, the decoded Σ nᵢΔᵢ / Σ nᵢ goes to the
strategy through `core.publish`. A phase ends when every live client answered or `--round-timeout` passed; an
attempt that loses too many clients is retried with a log line naming the phase and the clients.
docs/secure-aggregation.md has the protocol, the threat model and the parameters.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch

from fedstream.common.secagg import wire
from fedstream.common.secagg.errors import RoundFailed, SecAggError
from fedstream.common.secagg.graph import default_neighbours, default_threshold
from fedstream.common.secagg.messages import MaskedWindow
from fedstream.common.secagg.params import RoundParams
from fedstream.common.secagg.server_protocol import SecAggServer
from fedstream.server.aggregation.privacy import DelegatingStrategy
from fedstream.server.aggregation.strategies import Strategy
from fedstream.server.aggregation.unmasked_mean import UnmaskedMean
from fedstream.server.core import errors
from fedstream.server.core.config import ServerConfig
from fedstream.server.core.messages import Assignment, TaskKind
from fedstream.server.core.sessions import Session
from fedstream.server.intake.spool import SpooledUpdate
from fedstream.server.intake.upload import UploadSink
from fedstream.server.modes.secagg_round import SecAggRound
from fedstream.server.modes.sync_rounds import SyncRounds
from fedstream.server.publication.record import RoundRecord

log = logging.getLogger("fedstream.server")

CAPABILITY = "secagg"
MASKED_TENSOR = "secagg.masked"
RING_TORCH_DTYPES = {32: torch.int32, 64: torch.int64}
MAX_REASON_CHARS = 200


@dataclass(frozen=True)
class SecAggSettings:
    """The --secagg-* flags: clip C (required), bits B, neighbours K and threshold T (None: the documented defaults)."""

    clip: float
    bits: int = 16
    neighbours: int | None = None
    threshold: int | None = None

    def check(self) -> None:
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise ValueError(f"--secagg-clip {self.clip}: each coordinate of an update is clipped to ±C before "
                             "masking; give a finite C > 0 (for example 0.1)")
        if not 2 <= self.bits <= 48:
            raise ValueError(f"--secagg-bits {self.bits}: expected 2..48 bits per weighted coordinate (default 16)")
        if self.neighbours is not None and (self.neighbours < 2 or self.neighbours % 2):
            raise ValueError(f"--secagg-neighbours {self.neighbours}: the neighbour graph needs an even K >= 2 "
                             "(a K at or above the round's clients - 1 means everyone neighbours everyone)")
        if self.threshold is not None and self.neighbours is not None and not (
                self.neighbours < 2 * self.threshold <= 2 * self.neighbours):
            raise ValueError(f"--secagg-threshold {self.threshold} with --secagg-neighbours {self.neighbours}: "
                             "expected K/2 < T <= K, so the server can never collect T shares of both secrets of "
                             "one client")


class SecureAggregation(SyncRounds):
    name = "secure-aggregation"

    def __init__(self, settings: SecAggSettings) -> None:
        super().__init__()
        settings.check()
        self.settings = settings
        self.round: SecAggRound | None = None  # type: ignore[assignment]

    def check(self, config: ServerConfig, strategy: Strategy) -> None:
        super().check(config, strategy)
        if isinstance(strategy, DelegatingStrategy):
            raise ValueError("--dp with --secure-aggregation: the server cannot clip or noise updates it never sees; "
                             "distributed DP (clients adding discrete Gaussian noise) is not built yet, see "
                             "docs/secure-aggregation.md")
        if not strategy.streaming:
            raise ValueError(f"--strategy {strategy.name} needs every client's update; secure aggregation reveals "
                             "only their sum (use fedavg, fedavgm, fedadam, fedyogi, fedadagrad or fedprox)")
        if config.min_clients < 2:
            raise ValueError("--min-clients 1 with --secure-aggregation: the sum of one update is that update; "
                             "use --min-clients 2 or more")
        if config.upload_codec != "raw":
            raise ValueError(f"--upload-codec {config.upload_codec} with --secure-aggregation: masked words are "
                             "uniformly random, no codec shrinks them and a lossy one breaks the sum; use raw")
        if config.federated_eval:
            raise ValueError("--federated-eval is not offered with --secure-aggregation yet (each client's score "
                             "would travel in the clear); drop the flag")

    def bind(self, core) -> None:
        super().bind(core)
        odd = [name for name, (dtype, _) in core.reference.items() if not dtype.is_floating_point]
        if odd:
            raise ValueError(f"--secure-aggregation encodes floating tensors only; task {core.task.name} has "
                             f"integer tensors {odd[:3]} in its federated state")
        self.model_numel = sum(math.prod(shape) for _, shape in core.reference.values())

    # ----- the driver -----------------------------------------------------------------------------------------

    def _run_round(self, number: int) -> None:
        core = self.core
        attempt = 0
        while not core.finished:
            attempt += 1
            if not self._prepare_attempt(number, attempt):
                return
            rnd = self._open(number, attempt)
            if rnd is None:
                continue
            try:
                mean = self._run_phases(rnd)
            except RoundFailed as failed:
                self._fail(rnd, failed.phase, f"{failed.args[0]}; clients: {rnd.names(failed.clients)}")
                continue
            if core.stopping:
                log.warning("round=%d attempt=%d abandoned (%s)", number, attempt, core.stopping)
                self._end(rnd)
                return
            if mean is None:
                self._end(rnd)
                continue
            if self._publish(rnd, mean):
                return
            core.observer.event("retry", f"round {number} attempt {attempt}: the aggregate was not finite")

    def _open(self, number: int, attempt: int) -> SecAggRound | None:
        core, config = self.core, self.core.config
        with core.cond:
            selected = core.sample(number, attempt)
            weight_bound = max([1] + [s.num_examples for c in selected if (s := core.sessions.by_client(c))])
        neighbours = self.settings.neighbours or default_neighbours(len(selected))
        k = min(neighbours, len(selected) - 1)
        threshold = self.settings.threshold
        if threshold is None or not k < 2 * threshold <= 2 * k:
            if threshold is not None:
                log.warning("round=%d --secagg-threshold %d does not fit K=%d for %d clients; using T=%d", number,
                            threshold, k, len(selected), default_threshold(k))
            threshold = default_threshold(k)
        try:
            params = RoundParams.create(round_id=(number << 16) + attempt, clients=len(selected),
                                        model_numel=self.model_numel, clip=self.settings.clip, bits=self.settings.bits,
                                        weight_bound=weight_bound, neighbours=k, threshold=threshold)
            protocol = SecAggServer(params, min(config.min_clients, len(selected)), str(core.spool_dir))
        except SecAggError as exc:
            core.stop(f"secure aggregation cannot run round {number} with {len(selected)} clients: {exc}")
            return None
        rnd = SecAggRound(number, attempt, core.version, selected, protocol)
        log.info("round=%d attempt=%d secure aggregation with %d clients: K=%d, T=%d, Z_2^%d, step %.3g "
                 "(C=%g, B=%d, W=%d): %s", number, attempt, len(selected), params.neighbours, params.threshold,
                 params.ring_bits, params.encoding.step, params.clip, params.bits, params.weight_bound,
                 ", ".join(selected))
        core.observer.clients_sampled(len(selected))
        with core.cond:
            self.round = rnd
            self._open_phase(rnd, wire.ADVERTISE, {i: wire.setup_bytes(protocol.setup_for(i))
                                                   for i in rnd.client_at})
        return rnd

    def _open_phase(self, rnd: SecAggRound, phase: str, tasks: Mapping[int, bytes]) -> None:
        """Under the core's lock: the phase's tasks go out and the sampled clients' long polls wake."""
        rnd.open_phase(phase, dict(tasks), time.monotonic() + self.core.config.round_timeout)
        rnd.bytes_down += sum(len(p) for p in rnd.tasks.values())
        self.core.notify(list(rnd.tasks))

    def _run_phases(self, rnd: SecAggRound) -> UnmaskedMean | None:
        """The four phases; the unmasked mean, or None when the run ended meanwhile. Raises RoundFailed."""
        protocol = rnd.protocol
        steps: list[tuple[str, Callable[[], dict], Callable[[Any], bytes]]] = [
            (wire.SHARE_KEYS, protocol.close_advertise, wire.neighbour_keys_bytes),
            (wire.MASKED_INPUT, protocol.close_share_keys, wire.forwarded_shares_bytes),
            (wire.UNMASKING, protocol.close_masked_input, wire.unmask_request_bytes),
        ]
        for next_phase, close, encode in steps:
            if not self._wait_phase(rnd):
                return None
            with rnd.lock:
                messages = close()
            with self.core.cond:
                self._open_phase(rnd, next_phase, {i: encode(m) for i, m in messages.items()})
        if not self._wait_phase(rnd):
            return None
        started = time.perf_counter()
        with rnd.lock:
            ring_sum = protocol.finish()
        mean = UnmaskedMean(self.core.global_state, ring_sum, protocol.params.encoding, len(protocol.survivors),
                            protocol.params.window)
        rnd.unmask_seconds = time.perf_counter() - started
        return mean

    def _wait_phase(self, rnd: SecAggRound) -> bool:
        """Waits for the phase's answers or its deadline, then hands the dropped clients to the protocol."""
        core = self.core
        with core.cond:
            core.wait_until(rnd.phase_done, rnd.deadline - time.monotonic())
            for client in rnd.outstanding():
                if client not in rnd.uploading:
                    rnd.drop(client, f"no answer within --round-timeout {core.config.round_timeout:g} s")
            while rnd.folding or rnd.uploading:
                core.cond.wait(timeout=1.0)
                if time.monotonic() > rnd.deadline + core.config.round_timeout:
                    for client in list(rnd.uploading):
                        rnd.drop(client, "its masked upload did not finish")
            if core.finished:
                return False
            gone = [rnd.index_of[c] for c in rnd.dropped]
        with rnd.lock:
            for index in gone:
                rnd.protocol.drop(index)
        return True

    def _fail(self, rnd: SecAggRound, phase: str, reason: str) -> None:
        core = self.core
        log.warning("round=%d attempt=%d failed in phase %s and is retried: %s", rnd.number, rnd.attempt, phase,
                    reason)
        core.observer.event("retry", f"round {rnd.number} attempt {rnd.attempt} failed in phase {phase}")
        self._end(rnd)

    def _end(self, rnd: SecAggRound) -> None:
        with self.core.cond:
            rnd.closed = True
            if self.round is rnd:
                self.round = None
            self.core.notify(rnd.selected)

    def _publish(self, rnd: SecAggRound, mean: UnmaskedMean) -> bool:
        core, protocol = self.core, rnd.protocol
        survivors = [rnd.client_at[i] for i in protocol.survivors]
        dropped = {rnd.client_at[i]: f"{phase}: too few live neighbours" for i, phase in protocol.dropped.items()}
        dropped.update(rnd.dropped)
        record = RoundRecord(round=rnd.number, version=core.version, mode=self.name, clients=len(survivors),
                             selected=len(rnd.selected), train_loss=None, bytes_up=rnd.bytes_up,
                             bytes_down=rnd.bytes_down, seconds=0.0,
                             extras={"attempt": rnd.attempt, "dropped": dict(sorted(dropped.items())),
                                     "accepted": sorted(survivors), "secagg_ring_bits": protocol.params.ring_bits,
                                     "secagg_neighbours": protocol.params.neighbours,
                                     "secagg_threshold": protocol.params.threshold,
                                     "secagg_step": protocol.params.encoding.step,
                                     "secagg_exchange_bytes": rnd.exchange_bytes,
                                     "secagg_unmask_seconds": round(rnd.unmask_seconds, 4)})
        with core.cond:
            rnd.closed = True
        published = core.publish(rnd.number, [], mean, record, started=rnd.started)  # type: ignore[arg-type]
        with core.cond:
            self.round = None
        return published

    # ----- client calls ---------------------------------------------------------------------------------------

    def admit_client(self, client_id: str, capabilities: frozenset[str]) -> None:
        if CAPABILITY not in capabilities:
            raise errors.stale(f"client {client_id} does not offer secure aggregation (capability {CAPABILITY!r}); "
                               "this server runs --secure-aggregation: upgrade the client")

    def task_for(self, client_id: str) -> Assignment | None:
        rnd = self.round
        if rnd is None or rnd.closed or client_id not in rnd.tasks:
            return None
        if client_id in rnd.answered or client_id in rnd.dropped or client_id in rnd.uploading:
            return None
        rnd.handed.add(client_id)
        config = self.core.train_config(rnd.number, client_id) if rnd.phase == wire.MASKED_INPUT else None
        return Assignment(TaskKind.EXCHANGE, round=rnd.number, version=rnd.base_version, config=config,
                          phase=rnd.phase, payload=rnd.tasks[client_id])

    def exchange(self, client_id: str, round_number: int, phase: str, payload: bytes) -> bytes:
        core = self.core
        with core.cond:
            rnd = self.round
            if rnd is None or rnd.closed or rnd.number != round_number:
                current = f"round {rnd.number} is open" if rnd and not rnd.closed else "no round is open"
                raise errors.stale(f"client {client_id} sent a {phase!r} message for round {round_number}; {current}")
            if client_id not in rnd.index_of:
                raise errors.denied(f"client {client_id} was not sampled for round {rnd.number}")
            if client_id in rnd.dropped:
                raise errors.stale(f"client {client_id} was dropped from round {rnd.number} "
                                   f"({rnd.dropped[client_id]}); wait for the next round")
            if phase == wire.ABORT:
                reason = bytes(payload[:MAX_REASON_CHARS]).decode("utf-8", "replace").replace("\n", " ")
                rnd.drop(client_id, f"the client aborted: {reason}")
                log.warning("round=%d client=%s left secure aggregation in phase %s: %s", rnd.number, client_id,
                            rnd.phase, reason)
                core.notify()
                return b""
            if phase != rnd.phase or phase == wire.MASKED_INPUT:
                raise errors.stale(f"client {client_id} answered phase {phase[:64]!r}; round {rnd.number} is in "
                                   f"phase {rnd.phase!r}" + (" (the masked input travels as an upload)"
                                                             if phase == wire.MASKED_INPUT else ""))
            if client_id in rnd.answered:
                raise errors.already_exists(f"client {client_id} already answered phase {phase} of round "
                                            f"{rnd.number}; the first answer stands")
            index = rnd.index_of[client_id]
        try:
            message = PARSERS[phase](payload)
            if message.sender != index:
                raise SecAggError(f"the message claims to come from client number {message.sender}; "
                                  f"{client_id} is number {index}")
            with rnd.lock:
                RECEIVERS[phase](rnd.protocol, message)
        except SecAggError as exc:
            raise errors.invalid(f"client {client_id}'s {phase} message was refused: {exc}") from None
        with core.cond:
            rnd.answered.add(client_id)
            rnd.exchange_bytes += len(payload)
            core.notify()
        return b""

    def upload_reference(self) -> Mapping[str, tuple[torch.dtype, tuple[int, ...]]]:
        rnd = self.round
        if rnd is None:
            return {}
        params = rnd.protocol.params
        return {MASKED_TENSOR: (RING_TORCH_DTYPES[params.ring_bits], (params.vector_length,))}

    def admit(self, client_id: str, session: Session, header: Any) -> SecAggRound:
        rnd = self.round
        if rnd is None or rnd.closed or rnd.number != header.round or rnd.phase != wire.MASKED_INPUT:
            current = (f"round {rnd.number} is in phase {rnd.phase}" if rnd and not rnd.closed else "no round is open")
            raise errors.stale(f"client {client_id} sent a masked update for round {header.round}; {current}")
        if client_id not in rnd.tasks:
            raise errors.denied(f"client {client_id} has no masked input to send in round {rnd.number}")
        if client_id in rnd.dropped:
            raise errors.stale(f"client {client_id} was dropped from round {rnd.number} ({rnd.dropped[client_id]})")
        if header.base_version != rnd.base_version:
            raise errors.stale(f"client {client_id} trained on version {header.base_version}; round {rnd.number} "
                               f"started from version {rnd.base_version}")
        if client_id in rnd.answered:
            if header.upload_id and rnd.upload_ids.get(client_id) == header.upload_id:
                raise errors.Duplicate()
            raise errors.already_exists(f"client {client_id} already delivered its masked update for round "
                                        f"{rnd.number}")
        if client_id in rnd.uploading:
            raise errors.aborted(f"client {client_id} already has an upload in flight for round {rnd.number}")
        return rnd

    def upload_started(self, client_id: str, ticket: object, header: Any) -> None:
        rnd: SecAggRound = ticket  # type: ignore[assignment]
        rnd.uploading[client_id] = header.upload_id

    def accept(self, sink: UploadSink, update: SpooledUpdate) -> None:
        """Folds the masked vector from its spool into the modular accumulator, one mask window at a time."""
        core, client, rnd = self.core, sink.client_id, sink.ticket
        assert isinstance(rnd, SecAggRound)
        with core.cond:
            if rnd.closed or rnd.phase != wire.MASKED_INPUT or client in rnd.dropped:
                rnd.uploading.pop(client, None)
                core.notify()
                update.delete()
                raise errors.stale(f"round {rnd.number} moved on before client {client}'s masked update was folded")
            rnd.folding += 1
        params, index = rnd.protocol.params, rnd.index_of[client]
        try:
            for _item, start, values in update.pieces(slice_bytes=params.window * params.word_bytes):
                words = memoryview(values.numpy()).cast("B")
                with rnd.lock:
                    rnd.protocol.receive_masked_window(MaskedWindow(params.round_id, index, start, words))
            with rnd.lock:
                rnd.protocol.finish_masked_input(index)
        except SecAggError as exc:
            with core.cond:
                rnd.folding -= 1
                rnd.drop(client, f"masked update refused: {exc}")
                core.notify()
            raise errors.invalid(f"client {client}'s masked update was refused: {exc}") from None
        finally:
            update.delete()
        with core.cond:
            rnd.folding -= 1
            rnd.uploading.pop(client, None)
            rnd.answered.add(client)
            rnd.upload_ids[client] = sink.info.upload_id
            rnd.bytes_up += sink.writer.total_bytes
            core.notify()
        log.info("round=%d client=%s masked update folded (%.1f MB)", rnd.number, client,
                 sink.writer.total_bytes / 1e6)

    def aborted(self, sink: UploadSink, reason: str) -> None:
        rnd = sink.ticket
        if isinstance(rnd, SecAggRound) and rnd.uploading.get(sink.client_id) == sink.info.upload_id:
            rnd.drop(sink.client_id, reason)

    def client_gone(self, client_id: str, reason: str) -> None:
        rnd = self.round
        if rnd is not None and not rnd.closed:
            rnd.drop(client_id, reason)

    def client_back(self, client_id: str) -> None:
        """A client that lost its session lost its round keys too: it stays out until the next round."""


PARSERS: dict[str, Callable[[bytes], Any]] = {
    wire.ADVERTISE: wire.parse_public_keys,
    wire.SHARE_KEYS: wire.parse_share_keys,
    wire.UNMASKING: wire.parse_unmask_response,
}
RECEIVERS: dict[str, Callable[[SecAggServer, Any], None]] = {
    wire.ADVERTISE: SecAggServer.receive_keys,
    wire.SHARE_KEYS: SecAggServer.receive_shares,
    wire.UNMASKING: SecAggServer.receive_unmask,
}

__all__ = ["CAPABILITY", "MASKED_TENSOR", "SecAggSettings", "SecureAggregation"]
