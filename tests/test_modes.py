"""Round modes end to end: over-selection (the docs' example mode), a client gone for good, too few clients."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from fedstream.server.modes import MODES, OverSelection
from tests.harness import start_client, start_server, wait_all

SMALL = ("--task-option", "hidden=16", "--task-option", "epochs=1")


def records(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_the_example_mode_is_registered_by_one_line() -> None:
    assert MODES["over-selection"] is OverSelection


@pytest.mark.slow
def test_over_selection_closes_each_round_at_the_first_min_clients_updates(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    server = start_server(run_dir, "--mode", "over-selection", "--clients-per-round", "3", "--min-clients", "2",
                          "--rounds", "2", "--round-timeout", "120", *SMALL)
    try:
        clients = [start_client(server, "--partition", f"{i}/3", "--device", "cpu", *SMALL,
                                *(("--slowdown", "400") if i == 2 else ())) for i in range(3)]
        assert server.wait(timeout=150) == 0, server.log()[-3000:]
        assert wait_all(clients[:2], timeout=60) == [0, 0]
    finally:
        server.stop()
    got = records(run_dir)
    assert [r["round"] for r in got] == [1, 2] and all(r["mode"] == "over-selection" for r in got)
    for r in got:
        assert r["clients"] == 2 and "client-2" not in r["accepted"], r
        assert r["seconds"] < 60, f"round {r['round']} waited for the straggler ({r['seconds']} s)"
    assert "straggler(s) not waited for" in server.log()


@pytest.mark.slow
def test_a_client_gone_for_good_no_longer_stalls_the_run(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    server = start_server(run_dir, "--clients-per-round", "4", "--min-clients", "3", "--rounds", "4",
                          "--round-timeout", "30", "--session-timeout", "3", "--sample-grace", "2",
                          "--wait-for-clients", "60", *SMALL)
    try:
        clients = [start_client(server, "--partition", f"{i}/4", "--device", "cpu", *SMALL) for i in range(4)]
        deadline = time.monotonic() + 120
        while len(records(run_dir)) < 1:
            assert time.monotonic() < deadline and server.process.poll() is None, server.log()[-3000:]
            time.sleep(0.1)
        clients[3].send_signal(signal.SIGKILL)
        assert server.wait(timeout=150) == 0, server.log()[-3000:]
        assert wait_all(clients[:3], timeout=60) == [0, 0, 0]
    finally:
        server.stop()
    got = records(run_dir)
    assert [r["round"] for r in got] == [1, 2, 3, 4]
    assert got[-1]["clients"] == 3 and got[-1]["selected"] == 3, got[-1]
    assert "samples from the 3 connected clients" in server.log()
    assert "Traceback" not in server.log()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_too_few_clients_end_the_server_with_one_line_and_exit_1(tmp_path: Path, mode: str) -> None:
    run_dir = tmp_path / "run"
    server = start_server(run_dir, "--mode", mode, "--min-clients", "2", "--wait-for-clients", "3", *SMALL)
    try:
        client = start_client(server, "--partition", "0/2", "--device", "cpu", *SMALL)
        assert server.wait(timeout=60) == 1
        client.kill()
    finally:
        server.stop()
    log = server.log()
    assert "Traceback" not in log, log[-3000:]
    assert "fewer than --min-clients 2 clients connected within --wait-for-clients 3 s" in log, log[-2000:]
