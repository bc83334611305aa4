"""Prometheus metrics move with the RunView calls, per server registry, in valid exposition format."""

from __future__ import annotations

import math

from prometheus_client.parser import text_string_to_metric_families

from fedstream.server.observe.metrics import Metrics
from fedstream.server.observe.run_view import RunView


def samples(metrics: Metrics) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(metrics.expose().decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_calls_move_the_counters() -> None:
    view = RunView()
    view.client_joined("a", "cpu")
    view.client_joined("b", "cpu")
    view.clients_sampled(2)
    view.model_sent("a", 1000)
    view.model_sent("b", 1000)
    view.client_contributed("a", 700, 1.0)
    view.fold_finished(0.02)
    view.client_dropped("b", "upload broke")
    view.refusal("DATA_LOSS", "crc mismatch", "b")
    view.refusal("DATA_LOSS", "crc mismatch", "b")
    view.refusal("FAILED_PRECONDITION", "stale", "a")
    view.refusal("UNAUTHENTICATED", "bad token", rpc="Join")
    view.spool_bytes(4096)
    view.round_recorded({"round": 1, "version": 1, "seconds": 1.5, "epsilon": 0.25})
    s = samples(view.metrics)
    assert s[("fedstream_rounds_completed_total", ())] == 1
    assert s[("fedstream_model_version", ())] == 1
    assert s[("fedstream_clients_connected", ())] == 1
    assert s[("fedstream_clients_sampled", ())] == 2
    assert s[("fedstream_clients_dropped_total", ())] == 1
    assert s[("fedstream_received_bytes_total", ())] == 700
    assert s[("fedstream_sent_bytes_total", ())] == 2000
    assert s[("fedstream_uploads_accepted_total", ())] == 1
    assert s[("fedstream_uploads_refused_total", (("code", "DATA_LOSS"),))] == 2
    assert s[("fedstream_uploads_refused_total", (("code", "FAILED_PRECONDITION"),))] == 1
    assert s[("fedstream_requests_refused_total", (("code", "UNAUTHENTICATED"), ("rpc", "Join")))] == 1
    assert s[("fedstream_fold_duration_seconds_count", ())] == 1
    assert s[("fedstream_fold_duration_seconds_bucket", (("le", "0.025"),))] == 1
    assert s[("fedstream_fold_duration_seconds_bucket", (("le", "0.01"),))] == 0
    assert s[("fedstream_round_duration_seconds_sum", ())] == 1.5
    assert s[("fedstream_spool_bytes", ())] == 4096
    assert s[("fedstream_dp_epsilon", ())] == 0.25


def test_each_server_has_its_own_registry() -> None:
    first, second = RunView(), RunView()
    first.round_recorded({"round": 1})
    assert samples(first.metrics)[("fedstream_rounds_completed_total", ())] == 1
    assert samples(second.metrics)[("fedstream_rounds_completed_total", ())] == 0
    assert math.isnan(samples(second.metrics)[("fedstream_dp_epsilon", ())])
