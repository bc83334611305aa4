"""RunView: the clients table, states, bounded memory, events and the snapshot the dashboard serves."""

from __future__ import annotations

import json
import math
import threading

import pytest

from fedstream.server.observe.run_view import RunView


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_client_lifecycle_and_counts() -> None:
    clock = FakeClock()
    view = RunView(clock=clock)
    view.client_joined("site-a", "cuda:0")
    view.client_joined("site-b", "cpu")
    clock.now += 5
    view.client_state("site-a", "training")
    view.model_sent("site-a", 400)
    view.client_state("site-a", "uploading")
    view.client_contributed("site-a", 300, 2.5)
    view.client_dropped("site-b", "session expired after 30 s")
    snap = view.snapshot()
    rows = {row["id"]: row for row in snap["clients"]["rows"]}
    assert rows["site-a"] == {"id": "site-a", "device": "cuda:0", "state": "idle", "last_contact": 1005.0,
                              "rounds": 1, "bytes_up": 300, "bytes_down": 400, "train_seconds": 2.5, "reason": ""}
    assert rows["site-b"]["state"] == "dropped" and rows["site-b"]["reason"] == "session expired after 30 s"
    assert snap["clients"]["counts"] == {"idle": 1, "training": 0, "uploading": 0, "dropped": 1, "left": 0}
    assert snap["clients"]["connected"] == 1
    assert snap["totals"] == {"bytes_up": 300, "bytes_down": 400, "uploads_accepted": 1, "uploads_refused": 0,
                              "dropped": 1}
    assert snap["events"][0]["kind"] == "drop" and "site-b" in snap["events"][0]["text"]
    view.client_state("site-b", "training")
    assert view.snapshot()["clients"]["rows"][0]["reason"] == ""
    view.client_left("site-a")
    assert view.snapshot()["clients"]["counts"]["left"] == 1


def test_rows_are_most_recent_first_and_limited() -> None:
    clock = FakeClock()
    view = RunView(client_rows=3, clock=clock)
    for i in range(6):
        clock.now += 1
        view.client_joined(f"c{i}", "cpu")
    clock.now += 1
    view.client_dropped("c1", "upload broke")
    clients = view.snapshot()["clients"]
    assert [row["id"] for row in clients["rows"]] == ["c1", "c5", "c4"]
    assert clients["total"] == 6 and clients["shown"] == 3


def test_memory_is_bounded_and_counts_stay_right() -> None:
    view = RunView(max_clients=1000, max_rounds=50, max_events=20, client_rows=10)
    for i in range(10_000):
        view.client_joined(f"client-{i}", "cpu")
        if i % 3 == 0:
            view.client_dropped(f"client-{i}", "deadline")
    for r in range(1, 200):
        view.round_recorded({"round": r, "eval_accuracy": r / 200})
    snap = view.snapshot()
    assert snap["clients"]["total"] == 1000
    assert sum(snap["clients"]["counts"].values()) == 1000
    # the 1000 newest are client-9000..client-9999; every third of them (i % 3 == 0) is dropped
    assert snap["clients"]["counts"]["dropped"] == sum(1 for i in range(9000, 10_000) if i % 3 == 0)
    assert len(snap["events"]) == 20 and len(snap["recent_rounds"]) == 10
    assert snap["recent_rounds"][0]["round"] == 199
    assert [p["x"] for p in snap["series"]][0] == 150 and len(snap["series"]) == 50


def test_chart_series_is_thinned_keeping_the_last_round() -> None:
    view = RunView(chart_points=100)
    for r in range(1, 1001):
        view.round_recorded({"round": r, "eval_accuracy": 0.5, "eval_loss": 1.0, "train_loss": None})
    series = view.snapshot()["series"]
    assert len(series) == 100 and series[0]["x"] == 1 and series[-1]["x"] == 1000
    assert series[-1] == {"x": 1000, "eval_accuracy": 0.5, "eval_loss": 1.0, "train_loss": None}


def test_header_follows_records_and_rejects_unknown_fields() -> None:
    view = RunView()
    view.set_header(task="digits", mode="sync", strategy="fedavg", rounds=10, round=0, secure_aggregation=False)
    view.round_recorded({"round": 1, "epsilon": 0.7, "eval_accuracy": 0.5})
    header = view.snapshot()["header"]
    assert header["round"] == 1 and header["epsilon"] == 0.7 and header["rounds"] == 10
    with pytest.raises(ValueError, match="unknown run header field.*'colour'"):
        view.set_header(colour="blue")
    with pytest.raises(ValueError, match="client state 'sleeping'"):
        view.client_state("a", "sleeping")


def test_snapshot_is_strict_json_even_with_nan_and_hostile_text() -> None:
    view = RunView()
    view.client_joined("x" * 5000, "<script>alert(1)</script>")
    view.round_recorded({"round": 1, "eval_loss": math.nan, "train_loss": math.inf, "dropped": {"a": "broke"}})
    view.refusal("INVALID_ARGUMENT", "y" * 10_000, client_id="x" * 5000)
    text = json.dumps(view.snapshot(), allow_nan=False)
    snap = json.loads(text)
    assert snap["recent_rounds"][0]["eval_loss"] is None and snap["series"][0]["train_loss"] is None
    assert len(snap["clients"]["rows"][0]["id"]) <= 300 and len(snap["events"][0]["text"]) <= 300
    assert snap["totals"]["uploads_refused"] == 1


def test_restored_rounds_do_not_move_counters() -> None:
    view = RunView()
    view.rounds_restored([{"round": 1, "eval_accuracy": 0.4}, {"round": 2, "eval_accuracy": 0.6}])
    snap = view.snapshot()
    assert snap["header"]["round"] == 2 and len(snap["series"]) == 2 and snap["events"][0]["kind"] == "resume"
    assert view.metrics.rounds_completed._value.get() == 0


def test_round_sinks_receive_each_record_and_are_closed() -> None:
    seen: list[dict] = []
    closed: list[bool] = []

    class Sink:
        def round_recorded(self, record: dict) -> None:
            seen.append(record)

        def close(self) -> None:
            closed.append(True)

    view = RunView(sinks=[Sink()])
    view.round_recorded({"round": 1})
    view.close()
    assert seen == [{"round": 1}] and closed == [True]


def test_concurrent_calls_keep_counts_consistent() -> None:
    view = RunView()

    def worker(k: int) -> None:
        for i in range(2000):
            cid = f"c{(k * 7 + i) % 300}"
            view.client_joined(cid, "cpu")
            view.client_state(cid, "training")
            view.client_contributed(cid, 10, 0.1)
            if i % 5 == 0:
                view.client_dropped(cid, "broke")
            view.snapshot()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    snap = view.snapshot()
    assert sum(snap["clients"]["counts"].values()) == snap["clients"]["total"] == 300
    assert snap["totals"]["uploads_accepted"] == 8000 and snap["totals"]["bytes_up"] == 80_000
