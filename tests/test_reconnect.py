"""Clients may start before the server: they retry with backoff and train once it is up."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.harness import FEDSTREAM, env

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_clients_started_first_join_when_the_server_comes_up(tmp_path: Path) -> None:
    address = f"127.0.0.1:{_free_port()}"
    logs = [open(tmp_path / f"client{i}.log", "w") for i in range(2)]
    clients = [subprocess.Popen(FEDSTREAM + ["client", "--server", address, "--partition", f"{i}/2", "--device", "cpu",
                                             "--connect-timeout", "60", "--insecure"], stdout=log, stderr=subprocess.STDOUT, env=env())
               for i, log in enumerate(logs)]
    try:
        time.sleep(4)
        assert all(c.poll() is None for c in clients), "clients gave up before the server started"
        server = subprocess.run(FEDSTREAM + ["server", "--address", address, "--rounds", "1", "--min-clients", "2",
                                             "--run-dir", str(tmp_path / "run"), "--insecure"], capture_output=True, text=True,
                                timeout=120, env=env())
        assert server.returncode == 0, server.stderr[-3000:]
        assert [c.wait(timeout=30) for c in clients] == [0, 0]
        assert "retrying" in (tmp_path / "client0.log").read_text()
    finally:
        for c in clients:
            if c.poll() is None:
                c.kill()
