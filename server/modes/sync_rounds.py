"""Synchronous rounds: sample K connected clients, wait for their updates or the deadline, publish, repeat.

A round closes when every sampled client delivered or was dropped (upload broke, session expired, left) or
its deadline passed; with at least --min-clients updates it is aggregated and published, else retried as a new
attempt with a new sample. Before each round the mode waits for --min-clients connected clients, then a short
grace (--sample-grace) for the rest of --clients-per-round, and samples from whoever is there.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from fedstream.server.aggregation.aggregator import StreamingAggregator
from fedstream.server.aggregation.strategies import Strategy
from fedstream.server.core import errors
from fedstream.server.core.config import ServerConfig
from fedstream.server.core.coordinator import NotEnoughClients
from fedstream.server.core.messages import Assignment, TaskKind
from fedstream.server.core.round_mode import RoundMode
from fedstream.server.core.sessions import Session
from fedstream.server.intake.spool import SpooledUpdate
from fedstream.server.intake.upload import MAX_METRICS, UploadSink
from fedstream.server.modes.federated_eval import EvaluationRound
from fedstream.server.modes.round_state import RoundState
from fedstream.server.publication.record import RoundRecord

log = logging.getLogger("fedstream.server")

RELAY_FAILED = "relay-failed"  # Exchange phase: a relay tells the round it will send nothing (why, in the payload)
ROUND_SECONDS_LEFT = "relay_round_seconds_left"  # task option for relays: time to this round's deadline


class SyncRounds(RoundMode):
    name = "sync"
    accepts_relays = True

    def __init__(self) -> None:
        self.round: RoundState | None = None
        self.evaluation: EvaluationRound | None = None

    def check(self, config: ServerConfig, strategy: Strategy) -> None:
        if config.clients_per_round and config.min_clients > config.clients_per_round:
            raise ValueError(f"--min-clients {config.min_clients} exceeds --clients-per-round "
                             f"{config.clients_per_round}: a round could never close")

    # ----- the driver -----------------------------------------------------------------------------------------

    def run(self) -> None:
        core = self.core
        while core.completed_rounds < core.config.rounds and not core.finished:
            self._run_round(core.completed_rounds + 1)

    def _run_round(self, number: int) -> None:
        core, config = self.core, self.core.config
        attempt = 0
        while not core.finished:
            attempt += 1
            if not self._prepare_attempt(number, attempt):
                return
            with core.cond:
                selected = core.sample(number, attempt)
                aggregator = (StreamingAggregator(core.global_state, selected if config.reproducible else None)
                              if core.strategy.streaming else None)
                rnd = RoundState(number, attempt, core.version, selected, time.monotonic() + config.round_timeout,
                                 aggregator)
                self.round = rnd
                core.notify(selected)
            core.observer.clients_sampled(len(selected))
            log.info("round=%d attempt=%d started with %d client%s: %s", number, attempt, len(selected),
                     "" if len(selected) == 1 else "s", ", ".join(selected))
            self._wait_round(rnd)
            if core.stopping:
                log.warning("round=%d attempt=%d abandoned (%s): %d update(s) discarded; a restart with the same "
                            "run directory redoes this round", number, attempt, core.stopping, len(rnd.accepted))
                self._discard(rnd)
                return
            if len(rnd.accepted) >= config.min_clients:
                if self._close(rnd):
                    return
                core.observer.event("retry", f"round {number} attempt {attempt}: the aggregate was not finite")
            else:
                log.warning("round=%d attempt=%d got %d update(s), fewer than min_clients=%d; retrying", number,
                            attempt, len(rnd.accepted), config.min_clients)
                core.observer.event("retry", f"round {number} attempt {attempt}: {len(rnd.accepted)} update(s), "
                                             f"fewer than --min-clients {config.min_clients}")
            self._discard(rnd)

    def _prepare_attempt(self, number: int, attempt: int) -> bool:
        """Clients gathered, returning clients waited for, the strategy agrees; False: the run is over."""
        core = self.core
        if not self._gather(number):
            return False
        self._wait_for_returning_clients()
        reason = core.strategy.begin_round(number, len(core.sample(number, attempt)), len(core.sessions))
        if reason:
            log.warning("round=%d not started: %s", number, reason)
            core.end_by_strategy(reason)
            return False
        return True

    def _gather(self, number: int) -> bool:
        """Waits for --min-clients (up to --wait-for-clients), then up to --sample-grace for the rest of
        --clients-per-round (the first round waits the whole --wait-for-clients for them). False: run over."""
        core, config = self.core, self.core.config
        wanted = max(config.min_clients, config.clients_per_round, 1)
        deadline = time.monotonic() + config.wait_for_clients
        grace = config.wait_for_clients if core.completed_rounds == 0 else config.sample_grace
        with core.cond:
            core.wait_until(lambda: len(core.sessions) >= config.min_clients, config.wait_for_clients)
            core.wait_until(lambda: len(core.sessions) >= wanted, min(grace, deadline - time.monotonic()))
            if core.finished:
                return False
            connected = len(core.sessions)
        if connected < config.min_clients:
            raise NotEnoughClients(f"fewer than --min-clients {config.min_clients} clients connected within "
                                   f"--wait-for-clients {config.wait_for_clients:g} s (got {connected}); "
                                   "start more clients or lower --min-clients")
        if connected < wanted:
            log.warning("round=%d samples from the %d connected client%s: --clients-per-round %d asked for more, "
                        "and --min-clients %d are here", number, connected, "" if connected == 1 else "s",
                        config.clients_per_round, config.min_clients)
        return True

    def _wait_for_returning_clients(self) -> None:
        """After a restart, waits (up to one round timeout) for the clients of the checkpointed run to rejoin,
        so the resumed round samples from the same clients as an uninterrupted run would."""
        core = self.core
        if not core.returning:
            return
        timeout = min(core.config.round_timeout, core.config.wait_for_clients)
        with core.cond:
            core.wait_until(lambda: not (core.returning - set(core.sessions.client_ids())), timeout)
            missing = core.returning - set(core.sessions.client_ids())
            core.returning = set()
        if missing:
            log.warning("resumed without %d client(s) of the previous run: %s", len(missing), ", ".join(sorted(missing)))

    def round_done(self, rnd: RoundState) -> bool:
        """When the open round may close before its deadline: every sampled client delivered or was dropped."""
        return rnd.complete()

    def _wait_round(self, rnd: RoundState) -> None:
        core = self.core
        with core.cond:
            core.wait_until(lambda: self.round_done(rnd), rnd.deadline - time.monotonic())
            if not self.round_done(rnd) and not core.finished:
                for client in rnd.outstanding():
                    reason = f"round deadline of {core.config.round_timeout:.0f} s passed"
                    rnd.drop(client, reason)
                    core.observer.client_dropped(client, reason)
            rnd.closed = True
            while rnd.folding:
                core.cond.wait(timeout=1.0)

    def _discard(self, rnd: RoundState) -> None:
        with self.core.cond:
            for update in rnd.accepted.values():
                update.delete()
            self.round = None

    def _close(self, rnd: RoundState) -> bool:
        """Publishes the round through the core; False (nothing applied) when its aggregate is not finite."""
        core = self.core
        updates = [rnd.accepted[c] for c in sorted(rnd.accepted)]
        record = RoundRecord(round=rnd.number, version=core.version, mode=self.name, clients=len(updates),
                             selected=len(rnd.selected), train_loss=None, bytes_up=rnd.bytes_up,
                             bytes_down=rnd.bytes_down,
                             seconds=0.0, extras={"attempt": rnd.attempt, "dropped": dict(sorted(rnd.dropped.items())),
                                                  "accepted": sorted(rnd.accepted), **relay_extras(updates)})
        after = self._federated_evaluation if core.config.federated_eval else None
        if not core.publish(rnd.number, updates, rnd.aggregator, record, after=after, started=rnd.started):
            return False
        with core.cond:
            self.round = None
        for update in updates:
            update.delete()
        return True

    # ----- client calls ---------------------------------------------------------------------------------------

    def current_round(self) -> int:
        return self.round.number if self.round else 0

    def task_for(self, client_id: str) -> Assignment | None:
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
        self.core.observer.client_state(client_id, "training")
        config = self.core.train_config(rnd.number, client_id)
        if self.core.is_relay(client_id):
            config.options[ROUND_SECONDS_LEFT] = f"{max(0.0, rnd.deadline - time.monotonic()):.3f}"
        return Assignment(TaskKind.TRAIN, round=rnd.number, version=rnd.base_version, config=config)

    def admit(self, client_id: str, session: Session, header: Any) -> RoundState:
        rnd = self.round
        if rnd is None or rnd.closed or rnd.number != header.round:
            current = f"round {rnd.number} is open" if rnd and not rnd.closed else "no round is open"
            raise errors.stale(f"client {client_id} sent an update for round {header.round}; {current}")
        if not rnd.is_selected(client_id):
            raise errors.denied(f"client {client_id} was not sampled for round {rnd.number}")
        if header.base_version != rnd.base_version:
            raise errors.stale(f"client {client_id} trained on version {header.base_version}; "
                               f"round {rnd.number} started from version {rnd.base_version}")
        if client_id in rnd.accepted:
            if header.upload_id and rnd.upload_ids.get(client_id) == header.upload_id:
                raise errors.Duplicate()
            raise errors.already_exists(f"client {client_id} already delivered its update for round {rnd.number}")
        if client_id in rnd.uploading:
            raise errors.aborted(f"client {client_id} already has an upload in flight for round {rnd.number}")
        return rnd

    def upload_started(self, client_id: str, ticket: object, header: Any) -> None:
        rnd: RoundState = ticket  # type: ignore[assignment]
        rnd.uploading[client_id] = header.upload_id
        rnd.dropped.pop(client_id, None)

    def accept(self, sink: UploadSink, update: SpooledUpdate) -> None:
        core, client, rnd = self.core, sink.client_id, sink.ticket
        assert isinstance(rnd, RoundState)
        with core.cond:
            if rnd.closed:
                rnd.uploading.pop(client, None)
                update.delete()
                raise errors.stale(f"round {rnd.number} closed before client {client}'s update was complete")
            rnd.folding += 1
        try:
            if rnd.aggregator is not None:
                core.fold(rnd.aggregator, update, sink.info, key=client)
        except errors.Refusal as refusal:
            with core.cond:
                rnd.folding -= 1
                rnd.uploading.pop(client, None)
                rnd.drop(client, refusal.message)
                core.notify(())
            update.delete()
            raise
        with core.cond:
            rnd.folding -= 1
            rnd.uploading.pop(client, None)
            rnd.accepted[client] = update
            rnd.upload_ids[client] = sink.info.upload_id
            rnd.dropped.pop(client, None)
            rnd.bytes_up += sink.writer.total_bytes
            core.notify(())
        log.info("round=%d client=%s update accepted (%d examples, %.1f MB)", rnd.number, client,
                 sink.info.num_examples, sink.writer.total_bytes / 1e6)

    def aborted(self, sink: UploadSink, reason: str) -> None:
        rnd = sink.ticket
        assert isinstance(rnd, RoundState)
        if rnd.uploading.get(sink.client_id) == sink.info.upload_id:
            rnd.uploading.pop(sink.client_id, None)
            rnd.drop(sink.client_id, reason)

    def downloaded(self, client_id: str, nbytes: int) -> None:
        current = self.evaluation or self.round
        if current is not None:
            current.bytes_down += nbytes

    def client_gone(self, client_id: str, reason: str) -> None:
        if self.round is not None:
            self.round.drop(client_id, reason)

    def client_back(self, client_id: str) -> None:
        if self.round is not None:
            self.round.rejoined(client_id)

    def exchange(self, client_id: str, round_number: int, phase: str, payload: bytes) -> bytes:
        """A relay's report that it will send nothing this round: it is dropped, so the round need not wait for
        its deadline."""
        if phase != RELAY_FAILED:
            return super().exchange(client_id, round_number, phase, payload)
        reason = payload[:200].decode("utf-8", "replace")
        with self.core.cond:
            if not self.core.is_relay(client_id):
                raise errors.denied(f"client {client_id} sent {RELAY_FAILED!r}; only relays report failed rounds")
            rnd = self.round
            if rnd is None or rnd.closed or rnd.number != round_number or not rnd.is_selected(client_id):
                raise errors.stale(f"relay {client_id} reported round {round_number} failed; that round is not open "
                                   "for it")
            rnd.drop(client_id, f"relay reported failure: {reason}")
            self.core.notify(())
        log.warning("round=%d relay=%s reported failure: %s", round_number, client_id, reason)
        return b""

    # ----- federated evaluation -------------------------------------------------------------------------------

    def _federated_evaluation(self, record: RoundRecord) -> None:
        """Asks the round's connected clients (sampled like a training round) to evaluate the new version."""
        core = self.core
        with core.cond:
            ev = EvaluationRound(record.round, core.version, core.sample(record.round, 0),
                                 time.monotonic() + core.config.round_timeout)
            self.evaluation = ev
            core.notify(ev.selected)
            core.wait_until(ev.complete, core.config.round_timeout)
            self.evaluation = None
            core.notify()
        record.extras.update({**ev.metrics(), "federated_eval_bytes_down": ev.bytes_down})

    def evaluation_report(self, client_id: str, report: Any) -> None:
        ev = self.evaluation
        if ev is None or ev.number != report.round or ev.version != report.version:
            raise errors.stale(f"client {client_id} reported an evaluation of round {report.round} "
                               f"(version {report.version}); no such evaluation is open")
        if client_id not in ev.assigned:
            raise errors.denied(f"client {client_id} was not asked to evaluate round {ev.number}")
        metrics = {k: float(v) for k, v in report.metrics.items()}
        if report.num_examples < 0 or not all(map(math.isfinite, metrics.values())) or len(metrics) > MAX_METRICS:
            raise errors.invalid(f"client {client_id} sent an evaluation with negative examples, non-finite or "
                                 f"more than {MAX_METRICS} metrics")
        ev.reports[client_id] = (int(report.num_examples), metrics)


def relay_extras(updates: list[SpooledUpdate]) -> dict[str, Any]:
    """For a round that relays answered: which relay each contribution came through and how many leaf clients it
    folded (`relays`), and the leaf clients in all (`leaf_clients`, direct clients counting one each)."""
    infos = [u.info for u in updates if u.info is not None]
    relays = {i.client_id: i.aggregated_clients for i in infos if i.relay}
    if not relays:
        return {}
    return {"relays": dict(sorted(relays.items())), "leaf_clients": sum(i.aggregated_clients for i in infos)}
