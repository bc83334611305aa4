"""A network partition between machines: the server and two clients on three Linux network namespaces joined by
veth links; one client's link is cut mid-round and restored, and training still completes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.harness import FEDSTREAM, env

pytestmark = pytest.mark.slow

PORT = 7300
TIMEOUT = 6


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


def _namespaces_available() -> str:
    """Why namespaces cannot be used here ('' when they can)."""
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "creating network namespaces needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN)"
    probe = f"fsprobe{uuid.uuid4().hex[:6]}"
    made = _ip("netns", "add", probe)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    _ip("netns", "del", probe)
    return ""


class Hosts:
    """Three namespaces: `srv` linked to `c1` (10.231.1.0/24) and to `c2` (10.231.2.0/24) by veth pairs."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:5]
        self.ns = {name: f"fs{tag}{name}" for name in ("srv", "c1", "c2")}
        self.links = {c: (f"v{tag}s{c}", f"v{tag}{c}") for c in ("c1", "c2")}
        self.server_ip = {}

    def __enter__(self) -> "Hosts":
        try:
            for ns in self.ns.values():
                self._run("netns", "add", ns)
                self._run("-n", ns, "link", "set", "lo", "up")
            for i, (client, (srv_end, client_end)) in enumerate(self.links.items(), start=1):
                self._run("link", "add", srv_end, "type", "veth", "peer", "name", client_end)
                self._run("link", "set", srv_end, "netns", self.ns["srv"])
                self._run("link", "set", client_end, "netns", self.ns[client])
                self._run("-n", self.ns["srv"], "addr", "add", f"10.231.{i}.1/24", "dev", srv_end)
                self._run("-n", self.ns[client], "addr", "add", f"10.231.{i}.2/24", "dev", client_end)
                self._run("-n", self.ns["srv"], "link", "set", srv_end, "up")
                self._run("-n", self.ns[client], "link", "set", client_end, "up")
                self.server_ip[client] = f"10.231.{i}.1"
        except BaseException:
            self.__exit__()
            raise
        return self

    def _run(self, *args: str) -> None:
        result = _ip(*args)
        if result.returncode != 0:
            raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")

    def link(self, client: str, state: str) -> None:
        self._run("-n", self.ns[client], "link", "set", self.links[client][1], state)

    def spawn(self, host: str, args: list[str], log: Path) -> subprocess.Popen:
        with open(log, "w") as f:
            return subprocess.Popen(["ip", "netns", "exec", self.ns[host], *FEDSTREAM, *args], stdout=f,
                                    stderr=subprocess.STDOUT, env=env())

    def __exit__(self, *exc: object) -> None:
        for ns in self.ns.values():
            _ip("netns", "del", ns)


def test_partitioned_client_is_dropped_then_rejoins_and_training_completes(tmp_path: Path) -> None:
    reason = _namespaces_available()
    if reason:
        pytest.skip(f"network namespaces unavailable: {reason}")
    run_dir = tmp_path / "run"
    small = ["--task-option", "hidden=16"]
    with Hosts() as hosts:
        processes = []
        try:
            server = hosts.spawn("srv", ["server", "--address", f"0.0.0.0:{PORT}", "--insecure", "--run-dir", str(run_dir),
                                         "--rounds", "3", "--min-clients", "2", "--round-timeout", str(TIMEOUT),
                                         "--local-epochs", "1", *small], tmp_path / "server.log")
            processes.append(server)
            for i, client in enumerate(("c1", "c2")):
                processes.append(hosts.spawn(client, [
                    "client", "--server", f"{hosts.server_ip[client]}:{PORT}", "--insecure", "--client-id", client,
                    "--partition", f"{i}/2", "--device", "cpu", "--slowdown", "30", "--connect-timeout", "120", *small],
                    tmp_path / f"{client}.log"))
            log = tmp_path / "server.log"
            deadline = time.monotonic() + 120
            while "round=2 attempt=1 started" not in log.read_text():
                assert server.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.05)
            hosts.link("c1", "down")
            time.sleep(TIMEOUT + 2)
            hosts.link("c1", "up")
            assert server.wait(timeout=120) == 0, log.read_text()[-3000:]
            assert [p.wait(timeout=60) for p in processes[1:]] == [0, 0]
        finally:
            for p in processes:
                if p.poll() is None:
                    p.kill()
                    p.wait()
    server_log = (tmp_path / "server.log").read_text()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [1, 2, 3]
    assert "round=2 attempt=1 got 1 update(s), fewer than min_clients=2; retrying" in server_log, server_log[-3000:]
    assert records[1]["attempt"] >= 2 and records[1]["accepted"] == ["c1", "c2"], records[1]
    assert records[2]["accepted"] == ["c1", "c2"]
