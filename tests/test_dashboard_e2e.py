"""The dashboard of a real run: a real server process, real clients, one of them killed, read in headless Chromium."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.browser import SKIP_REASON, chromium_binary, dump_dom, screenshot
from tests.harness import start_client, start_server
from tests.test_dashboard_browser import DataRows

pytestmark = [pytest.mark.slow, pytest.mark.skipif(chromium_binary() is None, reason=SKIP_REASON)]


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def test_a_real_run_shows_its_rounds_its_clients_and_a_killed_client_as_dropped(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    server = start_server(run_dir, "--rounds", "200", "--min-clients", "2", "--round-timeout", "30",
                          "--session-timeout", "3", "--heartbeat-seconds", "1", "--task-option", "hidden=16",
                          "--task-option", "epochs=1")
    try:
        clients = [start_client(server, "--partition", f"{i}/3", "--device", "cpu", "--task-option", "hidden=16",
                                "--task-option", "epochs=1") for i in range(3)]
        wait_for(lambda: re.search(r"dashboard: (http://\S+)", server.log()), 60, "the dashboard link")
        url = re.search(r"dashboard: (http://\S+)", server.log()).group(1)
        metrics = run_dir / "metrics.jsonl"
        wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 2, 120, "two rounds")

        clients[2].send_signal(signal.SIGKILL)
        clients[2].wait()

        api = url.rstrip("/") + "/api/run"
        wait_for(lambda: _state(api, "client-2") == "dropped", 60, "client-2 shown as dropped")

        rows = DataRows()
        dom = asyncio.run(dump_dom(url))
        rows.feed(dom)
        assert {"1", "2"} <= rows.rounds, rows.rounds
        assert rows.clients.get("client-2") == "dropped", rows.clients
        assert {rows.clients.get("client-0"), rows.clients.get("client-1")} <= {"idle", "training", "uploading"}
        assert "no contact for 3 s" in dom

        shot = asyncio.run(screenshot(url, tmp_path / "dashboard.png", 1280, 900))
        image = np.asarray(Image.open(shot).convert("RGB"), dtype=np.int16)
        assert image.shape == (900, 1280, 3)
        assert (image.std(axis=(0, 1)) > 20).all(), "the screenshot is nearly one colour: the page did not render"

        with urllib.request.urlopen(url.rstrip("/") + "/metrics", timeout=5) as reply:
            first = _counter(reply.read().decode(), "fedstream_rounds_completed_total")
        wait_for(lambda: _scrape_rounds(url) > first, 60, "the rounds counter to move")
    finally:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout=60)
        finally:
            server.stop()


def _state(api: str, client: str) -> str | None:
    with urllib.request.urlopen(api, timeout=5) as reply:
        run = json.loads(reply.read())
    for row in run.get("clients", {}).get("rows", []):
        if row.get("id") == client:
            return row.get("state")
    return None


def _scrape_rounds(url: str) -> float:
    with urllib.request.urlopen(url.rstrip("/") + "/metrics", timeout=5) as reply:
        return _counter(reply.read().decode(), "fedstream_rounds_completed_total")


def _counter(text: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", text, flags=re.M)
    assert match, f"{name} missing from /metrics"
    return float(match.group(1))
