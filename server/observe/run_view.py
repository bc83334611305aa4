"""What a person watching a run sees, as one thread-safe object the server core feeds and the dashboard reads.

The core calls these methods (each O(1), from any thread or the event loop):

    view.set_header(task=, mode=, strategy=, rounds=, round=, version=, epsilon=, secure_aggregation=, ...)
    view.client_joined(client_id, device)             # Join accepted                    -> state "idle"
    view.client_state(client_id, state)               # "training" when a TRAIN task is handed out,
                                                      # "uploading" when its upload starts, "idle" after
    view.client_contributed(client_id, nbytes, train_seconds)   # upload accepted (folded or spooled)
    view.model_sent(client_id, nbytes)                # a model download finished
    view.client_dropped(client_id, reason)            # upload broke, session expired, rejoined, deadline
    view.client_left(client_id)                       # Leave, or the session is gone for good
    view.refusal(status_name, message, client_id=None, rpc="UploadUpdate")   # a request refused with a status
    view.clients_sampled(count)                       # a round sampled its clients
    view.fold_finished(seconds)                       # one update folded into the running sum
    view.spool_bytes(nbytes)                          # bytes of spool files on disk now
    view.event(kind, text)                            # "retry", "checkpoint", "resume", "finish", ...
    view.round_recorded(record)                       # the dict just appended to metrics.jsonl
    view.rounds_restored(records)                     # records of a resumed run (no counters move)

and the dashboard calls `view.snapshot()`, the JSON of `/api/run`.

Memory is bounded whatever the run: at most `max_clients` client rows (the least recently seen are forgotten
first), the last `max_rounds` round records and the last `max_events` events. The snapshot lists the
`client_rows` most recently seen clients, newest first (a drop counts as contact, so a fresh drop is on top), with
counts per state over every client, and the chart series thinned to at most `chart_points` rounds.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Protocol

from fedstream.server.observe.metrics import Metrics

log = logging.getLogger("fedstream.server")
STATES = ("idle", "training", "uploading", "dropped", "left")
CONNECTED_STATES = frozenset({"idle", "training", "uploading"})
HEADER_KEYS = frozenset({"task", "mode", "strategy", "rounds", "round", "version", "epsilon", "delta", "dp",
                         "secure_aggregation", "run_dir", "address", "clients_per_round", "min_clients",
                         "buffer_size", "status"})
CHART_KEYS = ("eval_accuracy", "eval_loss", "train_loss")
MAX_TEXT = 300


class RoundSink(Protocol):
    """Something else that keeps round records, such as the TensorBoard writer."""

    def round_recorded(self, record: dict) -> None: ...

    def close(self) -> None: ...


@dataclass(slots=True)
class ClientRow:
    """One client as the clients table shows it."""

    client_id: str
    device: str
    state: str
    last_contact: float
    rounds: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    train_seconds: float | None = None
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.client_id, "device": self.device, "state": self.state, "last_contact": self.last_contact,
                "rounds": self.rounds, "bytes_up": self.bytes_up, "bytes_down": self.bytes_down,
                "train_seconds": self.train_seconds, "reason": self.reason}


def _short(text: object) -> str:
    """Client-supplied text (ids, reasons, messages) cut to a length a table cell can show."""
    value = str(text)
    return value if len(value) <= MAX_TEXT else value[:MAX_TEXT - 1] + "…"


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def json_safe(value: Any) -> Any:
    """A copy that strict JSON can carry: NaN and ±inf become None, tuples lists, other objects strings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return str(value)


def _thin(points: list[dict], limit: int) -> list[dict]:
    """At most `limit` points, evenly spaced, always keeping the last."""
    if len(points) <= limit:
        return points
    step = len(points) / limit
    picked = [points[int(i * step)] for i in range(limit - 1)]
    return picked + [points[-1]]


class RunView:
    def __init__(self, metrics: Metrics | None = None, sinks: Iterable[RoundSink] = (),
                 max_clients: int = 100_000, max_rounds: int = 10_000, max_events: int = 200,
                 client_rows: int = 100, chart_points: int = 500, clock: Callable[[], float] = time.time) -> None:
        self.metrics = metrics if metrics is not None else Metrics()
        self._sinks = list(sinks)
        self._lock = threading.Lock()
        self._clock = clock
        self._started = clock()
        self._header: dict[str, Any] = {}
        self._clients: OrderedDict[str, ClientRow] = OrderedDict()
        self._state_counts = {state: 0 for state in STATES}
        self._rounds: deque[dict] = deque(maxlen=max_rounds)
        self._points: deque[dict] = deque(maxlen=max_rounds)
        self._events: deque[dict] = deque(maxlen=max_events)
        self._max_clients = max_clients
        self._client_rows = client_rows
        self._chart_points = chart_points
        self._totals = {"bytes_up": 0, "bytes_down": 0, "uploads_accepted": 0, "uploads_refused": 0, "dropped": 0}

    def set_header(self, **fields: Any) -> None:
        unknown = set(fields) - HEADER_KEYS
        if unknown:
            raise ValueError(f"unknown run header field(s) {sorted(unknown)}; known: {sorted(HEADER_KEYS)}")
        with self._lock:
            self._header.update(json_safe(fields))
        if fields.get("version") is not None:
            self.metrics.version.set(fields["version"])
        if _number(fields.get("epsilon")) is not None:
            self.metrics.epsilon.set(fields["epsilon"])

    def client_joined(self, client_id: str, device: str) -> None:
        with self._lock:
            row = self._touch(client_id)
            row.device = _short(device)
            self._set_state(row, "idle")
        self._publish_connected()

    def client_state(self, client_id: str, state: str) -> None:
        if state not in STATES:
            raise ValueError(f"client state {state!r} is not one of {STATES}")
        with self._lock:
            self._set_state(self._touch(client_id), state)
        self._publish_connected()

    def client_contributed(self, client_id: str, nbytes: int, train_seconds: float | None = None) -> None:
        with self._lock:
            row = self._touch(client_id)
            row.rounds += 1
            row.bytes_up += nbytes
            row.train_seconds = _number(train_seconds)
            self._set_state(row, "idle")
            self._totals["bytes_up"] += nbytes
            self._totals["uploads_accepted"] += 1
        self.metrics.uploads_accepted.inc()
        self.metrics.received_bytes.inc(nbytes)
        self._publish_connected()

    def model_sent(self, client_id: str, nbytes: int) -> None:
        with self._lock:
            row = self._touch(client_id)
            row.bytes_down += nbytes
            self._totals["bytes_down"] += nbytes
        self.metrics.sent_bytes.inc(nbytes)

    def client_dropped(self, client_id: str, reason: str) -> None:
        with self._lock:
            row = self._touch(client_id)
            row.reason = _short(reason)
            self._set_state(row, "dropped")
            self._totals["dropped"] += 1
            self._add_event("drop", f"{row.client_id} dropped: {row.reason}")
        self.metrics.dropped.inc()
        self._publish_connected()

    def client_left(self, client_id: str) -> None:
        with self._lock:
            self._set_state(self._touch(client_id), "left")
            self._add_event("leave", f"{_short(client_id)} left")
        self._publish_connected()

    def refusal(self, status_name: str, message: str, client_id: str | None = None,
                rpc: str = "UploadUpdate") -> None:
        who = f"{_short(client_id)}: " if client_id else ""
        with self._lock:
            if client_id is not None and client_id in self._clients:
                self._touch(client_id)
            if rpc == "UploadUpdate":
                self._totals["uploads_refused"] += 1
            self._add_event("refusal", f"{rpc} refused {status_name}: {who}{_short(message)}")
        self.metrics.refused(rpc, status_name)

    def clients_sampled(self, count: int) -> None:
        self.metrics.clients_sampled.set(count)

    def fold_finished(self, seconds: float) -> None:
        self.metrics.fold_seconds.observe(seconds)

    def spool_bytes(self, nbytes: int) -> None:
        self.metrics.spool_bytes.set(nbytes)

    def event(self, kind: str, text: str) -> None:
        with self._lock:
            self._add_event(kind, text)

    def round_recorded(self, record: Mapping[str, Any]) -> None:
        record = dict(record)
        safe = json_safe(record)
        with self._lock:
            self._append_round(safe)
        self.metrics.rounds_completed.inc()
        self.metrics.observe_round(record)
        for sink in self._sinks:
            try:
                sink.round_recorded(record)
            except Exception as exc:  # a full disk under TensorBoard files must not end the run
                log.warning("round %s: %s could not record it: %s", record.get("round", record.get("version")),
                            type(sink).__name__, exc)

    def rounds_restored(self, records: Iterable[Mapping[str, Any]]) -> None:
        with self._lock:
            for record in records:
                self._append_round(json_safe(record))
            if self._rounds:
                self._add_event("resume", f"resumed after round {self._rounds[-1].get('round', '?')}")

    def snapshot(self) -> dict[str, Any]:
        """The JSON of /api/run: header, chart series, last rounds, clients table and counts, recent events."""
        with self._lock:
            now = self._clock()
            rows = []
            for row in reversed(self._clients.values()):
                if len(rows) == self._client_rows:
                    break
                rows.append(row.as_dict())
            recent = [self._rounds[-i] for i in range(1, min(10, len(self._rounds)) + 1)]
            counts = dict(self._state_counts)
            return {
                "now": now,
                "started": self._started,
                "header": dict(self._header),
                "totals": dict(self._totals),
                "series": _thin(list(self._points), self._chart_points),
                "recent_rounds": recent,
                "clients": {"total": len(self._clients), "connected": sum(counts[s] for s in CONNECTED_STATES),
                            "counts": counts, "shown": len(rows), "order": "most recently seen first", "rows": rows},
                "events": list(self._events)[::-1],
            }

    def close(self) -> None:
        """Closes the sinks, which hold files (the TensorBoard writer)."""
        for sink in self._sinks:
            sink.close()

    def _touch(self, client_id: str) -> ClientRow:
        """The client's row, created if new and moved to the most-recent end; the oldest row goes past max_clients."""
        row = self._clients.get(client_id)
        now = self._clock()
        if row is None:
            row = ClientRow(_short(client_id), device="", state="idle", last_contact=now)
            self._clients[client_id] = row
            self._state_counts["idle"] += 1
            if len(self._clients) > self._max_clients:
                _, oldest = self._clients.popitem(last=False)
                self._state_counts[oldest.state] -= 1
        else:
            self._clients.move_to_end(client_id)
            row.last_contact = now
        return row

    def _set_state(self, row: ClientRow, state: str) -> None:
        self._state_counts[row.state] -= 1
        self._state_counts[state] += 1
        row.state = state
        if state != "dropped":
            row.reason = ""

    def _publish_connected(self) -> None:
        with self._lock:
            connected = sum(self._state_counts[s] for s in CONNECTED_STATES)
        self.metrics.clients_connected.set(connected)

    def _add_event(self, kind: str, text: str) -> None:
        self._events.append({"time": self._clock(), "kind": _short(kind), "text": _short(text)})

    def _append_round(self, record: dict) -> None:
        self._rounds.append(record)
        self._points.append(self._chart_point(record))
        self._header_from_record(record)

    def _header_from_record(self, record: dict) -> None:
        for key in ("round", "version", "epsilon"):
            if record.get(key) is not None:
                self._header[key] = record[key]

    @staticmethod
    def _chart_point(record: dict) -> dict[str, Any]:
        point = {"x": record.get("round", record.get("version"))}
        for key in CHART_KEYS:
            point[key] = _number(record.get(key))
        return point
