"""One fedstream federation for the benchmark: a real server process and N client processes on 127.0.0.1."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from procstats import PortTraffic, wait_peak

FEDSTREAM = [sys.executable, "-m", "fedstream.cli"]


@dataclass
class RunResult:
    """What one federation measured; seconds are per round, bytes per round unless named total."""

    system: str
    clients: int
    rounds: list[dict] = field(default_factory=list)
    round_seconds: list[float] = field(default_factory=list)
    wall_seconds: list[float] = field(default_factory=list)
    cpu_per_round: list[tuple[float, float]] = field(default_factory=list)
    model_bytes: int = 0
    server_peak: int = 0
    client_peaks: list[int] = field(default_factory=list)
    cpu_seconds: float = 0.0
    wire_total: int = 0
    notes: str = ""


def _task_flags(params: str, steps: int) -> list[str]:
    return ["--task", "synthetic", "--task-option", f"params={params}", "--task-option", f"steps={steps}"]


class _MetricsWatcher(threading.Thread):
    """Timestamps each metrics.jsonl line as it appears, with the CPU time the federation had used by then."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.stamps: list[float] = []
        self.cpu: list[tuple[float, float]] = []
        self.pids: list[int] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.poll()
            self._halt.wait(0.01)

    def poll(self) -> None:
        if self.path.exists():
            lines = sum(1 for line in self.path.read_text().splitlines() if line.strip())
            if lines > len(self.stamps):
                now, cpu = time.monotonic(), self.cpu_now()
                self.stamps += [now] * (lines - len(self.stamps))
                self.cpu += [cpu] * (lines - len(self.cpu))

    def cpu_now(self) -> tuple[float, float]:
        """(server CPU seconds, all clients' CPU seconds) so far."""
        totals = [0.0, 0.0]
        for i, pid in enumerate(self.pids):
            try:
                times = psutil.Process(pid).cpu_times()
                totals[min(i, 1)] += times.user + times.system
            except psutil.Error:
                pass
        return totals[0], totals[1]

    def stop(self) -> list[float]:
        self._halt.set()
        self.join(timeout=5)
        self.poll()
        return self.stamps


def run_fedstream(workdir: Path, clients: int, params: str, rounds: int, steps: int = 0,
                  extra_server: list[str] | None = None, env: dict[str, str] | None = None,
                  timeout: float = 900.0, client_device: str = "cpu", system: str = "fedstream") -> RunResult:
    """Runs one federation to the end and returns its measurements; raises with the logs when it fails.

    system names the row (a baseline revision passes its label and, in env, the PYTHONPATH that imports it).
    """
    run_dir = workdir / f"{re.sub(r'[^A-Za-z0-9._-]+', '_', system)}-{clients}c"
    run_dir.mkdir(parents=True, exist_ok=True)
    for old in run_dir.glob("**/*"):
        if old.is_file():
            old.unlink()
    port_file, log_path = run_dir / "server.port", run_dir / "server.log"
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    task = _task_flags(params, steps)
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            FEDSTREAM + ["server", "--address", "127.0.0.1:0", "--port-file", str(port_file), "--run-dir",
                         str(run_dir / "run"), "--rounds", str(rounds), "--min-clients", str(clients),
                         "--round-timeout", "600", "--wait-for-clients", "300", "--log-level", "INFO", "--insecure",
                         *task, *(extra_server or [])], stdout=log, stderr=subprocess.STDOUT, env=environment)
    deadline = time.monotonic() + 120
    while not (port_file.exists() and port_file.read_text().strip()):
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise RuntimeError(f"fedstream server did not start:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.05)
    port = int(port_file.read_text())
    traffic = PortTraffic(port)
    traffic.start()
    watcher = _MetricsWatcher(run_dir / "run" / "metrics.jsonl")
    watcher.start()
    procs = []
    for i in range(clients):
        with open(run_dir / f"client-{i}.log", "w") as log:
            procs.append(subprocess.Popen(
                FEDSTREAM + ["client", "--server", f"127.0.0.1:{port}", "--partition", f"{i}/{clients}",
                             "--device", client_device, "--connect-timeout", "120", "--log-level", "INFO", "--insecure", *task],
                stdout=log, stderr=subprocess.STDOUT, env=environment))
    watcher.pids = [server.pid] + [p.pid for p in procs]
    result = RunResult(system, clients)
    try:
        ended = wait_peak(server, timeout)
        result.server_peak, result.cpu_seconds = ended.peak_rss, ended.cpu_seconds
        for i, proc in enumerate(procs):
            client = wait_peak(proc, 60)
            result.client_peaks.append(client.peak_rss)
            result.cpu_seconds += client.cpu_seconds
            if client.code != 0:
                raise RuntimeError(f"client {i} exited with {client.code}:\n"
                                   f"{(run_dir / f'client-{i}.log').read_text()[-3000:]}")
        if ended.code != 0:
            raise RuntimeError(f"fedstream server exited with {ended.code}:\n{log_path.read_text()[-3000:]}")
    finally:
        for proc in [server, *procs]:
            if proc.returncode is None and proc.poll() is None:
                proc.kill()
                proc.wait()
        stamps = watcher.stop()
        sent, received, _unknown = traffic.stop()
    records = [json.loads(line) for line in (run_dir / "run" / "metrics.jsonl").read_text().splitlines() if line.strip()]
    result.rounds = records
    result.round_seconds = [float(r["seconds"]) for r in records]
    result.wall_seconds = [b - a for a, b in zip(stamps, stamps[1:])]
    result.cpu_per_round = [(b[0] - a[0], b[1] - a[1]) for a, b in zip(watcher.cpu, watcher.cpu[1:])]
    result.model_bytes = int(sum(r["bytes_up"] + r["bytes_down"] for r in records) / max(len(records), 1))
    result.wire_total = sent + received if traffic.available else -1
    return result
