"""Relay rounds: to its clients a coordinator, to its upstream one client that answers with their partial sum.

The driver long-polls the upstream. On TRAIN (round r, version v) the relay downloads v once, makes it the
version it serves (`Coordinator.adopt`), and opens a local round r over every client connected to it once at least
--min-clients are; their updates fold as they stream into one running sum (O(model) memory). It then uploads the
weighted mean of its clients' deltas with num_examples = Σ nᵢ (the weights it folded with) and
aggregated_clients = k, so the upstream's FedAvg over relays is FedAvg over all leaves. With fewer than
--min-clients updates it uploads nothing and reports the round failed upstream.

Local deadline: min(--round-timeout, L − margin), where L is the time left in the upstream's round when the task
was handed out (the task option `relay_round_seconds_left`) and margin = max(1 s, 10 % of L, twice the relay's
last upload time), which leaves time for the upload upstream.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Protocol

import torch
from torch import nn
from torch.utils.data import TensorDataset

from fedstream.common.tasks import Task, TrainSettings
from fedstream.server.aggregation.aggregator import StreamingAggregator
from fedstream.server.aggregation.strategies import Strategy
from fedstream.server.core.config import ServerConfig
from fedstream.server.core.coordinator import client_metrics
from fedstream.server.core.messages import Assignment, TaskKind, TrainConfig
from fedstream.server.modes.round_state import RoundState
from fedstream.server.modes.sync_rounds import ROUND_SECONDS_LEFT, SyncRounds
from fedstream.server.publication.record import RoundRecord

if TYPE_CHECKING:
    from fedstream.server.intake.spool import SpooledUpdate

log = logging.getLogger("fedstream.relay")
MIN_LOCAL_SECONDS = 0.5


class UpstreamTaskLike(Protocol):
    kind: str
    round: int
    version: int
    config: dict[str, Any]
    message: str


class Upstream(Protocol):
    """What the relay mode needs from its upstream session (client/upstream.py's UpstreamLink)."""

    bytes_up: int
    bytes_down: int
    finished: Any  # a threading.Event: set when the upstream said the run is over

    def next_task(self) -> UpstreamTaskLike: ...

    def download(self, version: int) -> tuple["OrderedDict[str, torch.Tensor]", list[str]]: ...

    def upload(self, round_number: int, version: int, mean: Mapping[str, torch.Tensor], num_examples: int,
               aggregated_clients: int, metrics: Mapping[str, float]) -> int: ...

    def report_failure(self, round_number: int, reason: str) -> None: ...

    def leave(self, reason: str) -> None: ...


class UpstreamError(Exception):
    """Raised by an Upstream when the upstream refuses for good; the relay logs it and goes on."""


@dataclass
class UpstreamModel(Task):
    """A relay's task: the tensors its upstream serves. It trains and evaluates nothing, so it needs no --task."""

    state: Mapping[str, torch.Tensor] | None = None

    def federated_state(self, model: nn.Module) -> "OrderedDict[str, torch.Tensor]":
        return OrderedDict((k, v.detach().clone()) for k, v in (self.state or {}).items())

    def load_federated_state(self, model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
        """The relay holds no model to load into."""


def upstream_model(state: Mapping[str, torch.Tensor]) -> UpstreamModel:
    empty = TensorDataset(torch.zeros(0, 1), torch.zeros(0, dtype=torch.long))
    return UpstreamModel(name="relay", make_model=nn.Module, train_data=empty, test_data=empty,
                         defaults=TrainSettings(), state=state)


class RelayRounds(SyncRounds):
    name = "relay"
    accepts_relays = True  # tiers nest: a relay's clients may be relays themselves

    def __init__(self, upstream: Upstream, refused: type[Exception] = UpstreamError) -> None:
        super().__init__()
        self.upstream = upstream
        self.refused = refused
        self.leaf_config: TrainConfig | None = None
        self.last_upload_seconds = 0.0

    def check(self, config: ServerConfig, strategy: Strategy) -> None:
        if type(strategy).aggregate is not Strategy.aggregate or type(strategy).weight is not Strategy.weight \
                or type(strategy).apply is not Strategy.apply or not strategy.streaming:
            raise ValueError(f"a relay folds its clients with the example-weighted mean (fedavg), got "
                             f"{strategy.name}; the upstream's strategy applies at the top")
        if config.federated_eval or config.reproducible:
            raise ValueError("a relay runs no federated evaluation and folds in arrival order; its upstream decides")

    # ----- the driver -----------------------------------------------------------------------------------------

    def run(self) -> None:
        core = self.core
        reason = "finished"
        try:
            while not core.finished:
                try:
                    task = self.upstream.next_task()
                except self.refused as exc:
                    reason = f"upstream refused: {exc}"
                    log.error("relay stops: %s", reason)
                    core.stop(reason)
                    return
                if task.kind == "finish":
                    log.info("upstream finished the run: %s", task.message or "the run is over")
                    return
                if task.kind == "train":
                    self._relay_round(task)
                elif task.kind in ("evaluate", "exchange"):
                    log.warning("round=%d upstream sent a %s task; a relay answers only TRAIN tasks (see "
                                "docs/relays.md)", task.round, task.kind)
                    self.upstream.report_failure(task.round, f"a relay does not answer {task.kind} tasks")
        finally:
            if core.stopping:
                reason = core.stopping
            self.upstream.leave(reason)

    def local_seconds(self, task: UpstreamTaskLike) -> float:
        """min(--round-timeout, L − max(1 s, 10 % of L, 2 × last upload time)): L is the upstream round's time left."""
        left = float(task.config.get("options", {}).get(ROUND_SECONDS_LEFT, "inf"))
        if not math.isfinite(left):
            return self.core.config.round_timeout
        margin = max(1.0, 0.1 * left, 2 * self.last_upload_seconds)
        return max(MIN_LOCAL_SECONDS, min(self.core.config.round_timeout, left - margin))

    def _relay_round(self, task: UpstreamTaskLike) -> None:
        core, config = self.core, self.core.config
        if task.version != core.version:
            try:
                state, masked = self.upstream.download(task.version)
            except self.refused as exc:
                log.warning("round=%d version %d could not be downloaded: %s", task.round, task.version, exc)
                return
            core.adopt(task.version, state, masked)
            log.info("round=%d adopted upstream version %d", task.round, task.version)
        started = time.monotonic()
        deadline = started + self.local_seconds(task)
        options = {k: v for k, v in task.config.get("options", {}).items() if k != ROUND_SECONDS_LEFT}
        self.leaf_config = TrainConfig(**{**{k: v for k, v in task.config.items() if k != "options"},
                                          "options": options})
        with core.cond:
            core.wait_until(lambda: len(core.sessions) >= config.min_clients, deadline - time.monotonic())
            selected = core.sessions.client_ids()
            if core.finished:
                return
            rnd = RoundState(task.round, 1, core.version, selected, deadline, StreamingAggregator(core.global_state),
                             started=started)
            self.round = rnd
            if len(selected) >= config.min_clients:
                core.notify(selected)
        if len(selected) < config.min_clients:
            self._fail(rnd, f"{len(selected)} client(s) connected to relay, fewer than its --min-clients "
                            f"{config.min_clients}")
            return
        log.info("round=%d relaying version %d to %d client%s (local deadline %.1f s)", task.round, task.version,
                 len(selected), "" if len(selected) == 1 else "s", deadline - started)
        self._wait_round(rnd)
        if core.stopping or self.upstream.finished.is_set():
            self._discard(rnd)
            return
        if len(rnd.accepted) < config.min_clients:
            self._fail(rnd, f"{len(rnd.accepted)} of relay's {len(selected)} client(s) delivered, fewer than its "
                            f"--min-clients {config.min_clients}")
            return
        self._forward(rnd)

    def _forward(self, rnd: RoundState) -> None:
        """Uploads the round's weighted mean with Σ nᵢ and k, then records the round."""
        core = self.core
        updates = [rnd.accepted[c] for c in sorted(rnd.accepted)]
        infos = [u.info for u in updates if u.info is not None]
        aggregator = rnd.aggregator
        assert aggregator is not None
        weight = aggregator.weight_sum
        leaves = sum(i.aggregated_clients for i in infos)
        record = self._record(rnd, updates)
        if weight <= 0:
            self._fail(rnd, "every delivered update had zero weight (no examples)", record)
            return
        mean = as_reference(aggregator.mean(), core.global_state)
        reported = {k: v for k, v in client_metrics(infos).items() if v is not None and math.isfinite(v)}
        reported["relay_seconds"] = time.monotonic() - rnd.started
        began = time.monotonic()
        log.info("round=%d uploading the mean of %d client(s) (%d leaf client(s), %d examples)", rnd.number,
                 len(updates), leaves, round(weight))
        try:
            sent = self.upstream.upload(rnd.number, rnd.base_version, mean, int(round(weight)), leaves, reported)
        except self.refused as exc:
            log.warning("round=%d upstream refused the relay's update: %s", rnd.number, exc)
            record.extras.update({"uploaded": False, "upstream_refusal": str(exc)[:300]})
        else:
            self.last_upload_seconds = time.monotonic() - began
            record.extras.update({"uploaded": True, "upstream_bytes_up": sent,
                                  "upload_seconds": round(self.last_upload_seconds, 4)})
        core.bounds.round_closed(infos)
        self._discard(rnd)
        record.extras.update({"aggregated_clients": leaves, "num_examples": int(round(weight))})
        record.seconds = round(time.monotonic() - rnd.started, 4)
        core.runlog.append(record.as_dict())

    def _fail(self, rnd: RoundState, reason: str, record: RoundRecord | None = None) -> None:
        log.warning("round=%d relay sends nothing upstream: %s", rnd.number, reason)
        self.upstream.report_failure(rnd.number, reason)
        record = record or self._record(rnd, list(rnd.accepted.values()))
        record.extras.update({"uploaded": False, "failure": reason})
        record.seconds = round(time.monotonic() - rnd.started, 4)
        self._discard(rnd)
        self.core.runlog.append(record.as_dict())

    def _record(self, rnd: RoundState, updates: list["SpooledUpdate"]) -> RoundRecord:
        infos = [u.info for u in updates if u.info is not None]
        reported = client_metrics(infos)
        return RoundRecord(round=rnd.number, version=rnd.base_version, mode=self.name, clients=len(updates),
                           selected=len(rnd.selected), train_loss=reported.get("train_loss"), bytes_up=rnd.bytes_up,
                           bytes_down=rnd.bytes_down, seconds=0.0,
                           extras={"dropped": dict(sorted(rnd.dropped.items())), "accepted": sorted(rnd.accepted)})

    # ----- client calls ---------------------------------------------------------------------------------------

    def task_for(self, client_id: str) -> Assignment | None:
        """The upstream's training settings, as they came (a relay below this one also gets its time left)."""
        assignment = super().task_for(client_id)
        if assignment is not None and assignment.kind == TaskKind.TRAIN and self.leaf_config is not None:
            options = dict(self.leaf_config.options)
            if ROUND_SECONDS_LEFT in assignment.config.options:
                options[ROUND_SECONDS_LEFT] = assignment.config.options[ROUND_SECONDS_LEFT]
            assignment.config = TrainConfig(**{**vars(self.leaf_config), "options": options})
        return assignment

    def round_done(self, rnd: RoundState) -> bool:
        return rnd.complete() or self.upstream.finished.is_set()


def as_reference(mean: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
    """The mean in the model's dtypes (what the upstream's manifest check expects); integer tensors rounded."""
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for name, ref in reference.items():
        value = mean[name]
        out[name] = value.to(ref.dtype) if ref.dtype.is_floating_point else torch.round(value).to(ref.dtype)
    return out
