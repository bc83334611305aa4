"""Real processes for end-to-end tests: a server on 127.0.0.1 with an OS-chosen port, and client processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

FEDSTREAM = [sys.executable, "-m", "fedstream.cli"]
CLIENT_DEVICE = os.environ.get("FEDSTREAM_TEST_DEVICE", "cpu")
"""Where end-to-end clients train: cpu in CI; FEDSTREAM_TEST_DEVICE=cuda on a GPU machine reruns them on CUDA."""


@dataclass
class ServerProcess:
    process: subprocess.Popen
    address: str
    run_dir: Path
    log_path: Path
    clients: list[subprocess.Popen] = field(default_factory=list)

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def client_log(self, index: int) -> str:
        path = self.run_dir.parent / f"{self.run_dir.name}.client{index}.log"
        return path.read_text() if path.exists() else ""

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(f"server did not finish within {timeout} s; its log:\n{self.log()[-4000:]}")

    def stop(self) -> None:
        for p in [*self.clients, self.process]:
            if p.poll() is None:
                p.kill()
                p.wait()


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def security_flags(args: tuple[str, ...]) -> list[str]:
    """Plaintext on loopback unless the test passes its own --tls-dir (the CLI requires one or the other)."""
    return [] if "--tls-dir" in args or "--insecure" in args else ["--insecure"]


def start_server(run_dir: Path, *args: str, timeout: float = 60.0, name: str = "server") -> ServerProcess:
    run_dir.mkdir(parents=True, exist_ok=True)
    port_file = run_dir.parent / f"{run_dir.name}.{name}.port"
    port_file.unlink(missing_ok=True)
    log_path = run_dir.parent / f"{run_dir.name}.{name}.log"
    with open(log_path, "a") as log:
        process = subprocess.Popen(
            FEDSTREAM + ["server", "--address", "127.0.0.1:0", "--port-file", str(port_file), "--run-dir", str(run_dir),
                         *security_flags(args), *args], stdout=log, stderr=subprocess.STDOUT, env=env())
    deadline = time.monotonic() + timeout
    while not (port_file.exists() and port_file.read_text().strip()):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"server did not start: {log_path.read_text()[-3000:]}")
        time.sleep(0.05)
    return ServerProcess(process, f"127.0.0.1:{port_file.read_text().strip()}", run_dir, log_path)


def start_client(server: ServerProcess, *args: str, log_name: str | None = None) -> subprocess.Popen:
    log_path = server.run_dir.parent / f"{server.run_dir.name}.{log_name or 'client' + str(len(server.clients))}.log"
    with open(log_path, "a") as log:
        process = subprocess.Popen(FEDSTREAM + ["client", "--server", server.address, "--connect-timeout", "60",
                                                *security_flags(args), *on_test_device(args)],
                                   stdout=log, stderr=subprocess.STDOUT, env=env())
    server.clients.append(process)
    return process


def on_test_device(args: tuple[str, ...]) -> list[str]:
    """The client's flags with `--device cpu` swapped for CLIENT_DEVICE."""
    out = list(args)
    for i, arg in enumerate(out[:-1]):
        if arg == "--device" and out[i + 1] == "cpu":
            out[i + 1] = CLIENT_DEVICE
    return out


def wait_all(processes: list[subprocess.Popen], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    codes = []
    for p in processes:
        codes.append(p.wait(timeout=max(0.1, deadline - time.monotonic())))
    return codes
