"""Prometheus metrics of one server, in a registry of its own (two servers in one process do not mix counts).

`RunView` moves these as the core reports what happens; `/metrics` on the dashboard serves `Metrics.expose()`.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

FOLD_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, math.inf)
ROUND_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, math.inf)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.rounds_completed = Counter("fedstream_rounds_completed", "Rounds (sync) or versions (async) published "
                                        "and recorded", registry=r)
        self.version = Gauge("fedstream_model_version", "Version of the current global model", registry=r)
        self.clients_connected = Gauge("fedstream_clients_connected", "Clients idle, training or uploading",
                                       registry=r)
        self.clients_sampled = Gauge("fedstream_clients_sampled", "Clients sampled for the current round",
                                     registry=r)
        self.dropped = Counter("fedstream_clients_dropped", "Clients dropped from a round (upload broke, session "
                               "expired, deadline)", registry=r)
        self.received_bytes = Counter("fedstream_received_bytes", "Update bytes accepted from clients", registry=r)
        self.sent_bytes = Counter("fedstream_sent_bytes", "Model bytes sent to clients", registry=r)
        self.uploads_accepted = Counter("fedstream_uploads_accepted", "Updates accepted", registry=r)
        self.uploads_refused = Counter("fedstream_uploads_refused", "Uploads refused, by gRPC status code",
                                       ["code"], registry=r)
        self.requests_refused = Counter("fedstream_requests_refused", "Other requests refused, by RPC and gRPC "
                                        "status code", ["rpc", "code"], registry=r)
        self.fold_seconds = Histogram("fedstream_fold_duration_seconds", "Time to fold one update into the "
                                      "running sum", buckets=FOLD_BUCKETS, registry=r)
        self.round_seconds = Histogram("fedstream_round_duration_seconds", "Time from a round's start to its "
                                       "publication", buckets=ROUND_BUCKETS, registry=r)
        self.spool_bytes = Gauge("fedstream_spool_bytes", "Bytes of spooled updates on disk", registry=r)
        self.epsilon = Gauge("fedstream_dp_epsilon", "Differential privacy epsilon spent so far (NaN without DP)",
                             registry=r)
        self.epsilon.set(math.nan)

    def refused(self, rpc: str, code: str) -> None:
        if rpc == "UploadUpdate":
            self.uploads_refused.labels(code=code).inc()
        else:
            self.requests_refused.labels(rpc=rpc, code=code).inc()

    def observe_round(self, record: Mapping[str, Any]) -> None:
        """Gauges and histograms that a round record carries: its duration, the version, ε."""
        seconds = record.get("seconds")
        if isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds >= 0:
            self.round_seconds.observe(seconds)
        version = record.get("version", record.get("round"))
        if isinstance(version, (int, float)):
            self.version.set(version)
        epsilon = record.get("epsilon")
        if isinstance(epsilon, (int, float)):
            self.epsilon.set(epsilon)

    def expose(self) -> bytes:
        return generate_latest(self.registry)
