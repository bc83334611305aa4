"""One Flower federation in its real deployment mode: a SuperLink, N SuperNodes and `flwr run`, on 127.0.0.1.

Flower lives in its own virtualenv (flower_env.py). The app in flower_app/ runs the same workload as fedstream's
`synthetic` task with no-op training: FedAvg over all N nodes, no federated evaluation. The ServerApp writes each
training round's wall time (configure → aggregate) to a JSON-lines file.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from fedstream_run import RunResult
from flower_env import ensure_flower_env
from procstats import PortTraffic, TreeSampler

APP_DIR = Path(__file__).resolve().parent / "flower_app"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(port: int, process: subprocess.Popen, log: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"flower-superlink exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"flower-superlink did not listen on {port} within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def run_flower(workdir: Path, clients: int, params: str, rounds: int, timeout: float = 1800.0) -> RunResult:
    """Runs one Flower federation to the end and returns the same measurements as run_fedstream."""
    bin_dir = ensure_flower_env()
    run_dir = workdir / f"flower-{clients}c"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    home = run_dir / "flwr-home"
    home.mkdir()
    port = free_port()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "bench"\n\n[superlink.bench]\naddress = "127.0.0.1:{port}"\ninsecure = true\n')
    env = {**os.environ, "FLWR_HOME": str(home), "FLWR_DISABLE_UPDATE_CHECK": "1", "PYTHONUNBUFFERED": "1",
           "OMP_NUM_THREADS": "1", "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("VIRTUAL_ENV", None)
    timing = run_dir / "rounds.jsonl"
    sampler = TreeSampler()
    logs: list = []

    def start(name: str, args: list[str]) -> subprocess.Popen:
        log = open(run_dir / f"{name}.log", "w")
        logs.append(log)
        return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=run_dir)

    procs: list[subprocess.Popen] = []
    traffic: PortTraffic | None = None
    try:
        link = start("superlink", [str(bin_dir / "flower-superlink"), "--insecure", "--port", str(port),
                                   "--disable-runtime-dependency-installation"])
        procs.append(link)
        sampler.watch(link.pid, "server")
        sampler.start()
        _wait_listening(port, link, run_dir / "superlink.log")
        traffic = PortTraffic(port, interval=0.05)
        nodes = []
        for i in range(clients):
            node = start(f"supernode-{i}", [str(bin_dir / "flower-supernode"), "--insecure", "--superlink",
                                            f"127.0.0.1:{port}", "--port", str(free_port()), "--node-config",
                                            f"partition-id={i} num-partitions={clients}"])
            procs.append(node)
            nodes.append(node)
            sampler.watch(node.pid, f"client-{i}")
        traffic.only_from(lambda pid: any(pid in tree for tree in process_trees([n.pid for n in nodes])))
        traffic.start()
        config = (f"num-server-rounds={rounds} num-clients={clients} params='{params}' "
                  f"timing-file='{timing}'")
        done = subprocess.run([str(bin_dir / "flwr"), "run", str(APP_DIR), "bench", "--stream", "--run-config",
                               config], env=env, cwd=run_dir, capture_output=True, text=True, timeout=timeout)
        (run_dir / "flwr-run.log").write_text(done.stdout + done.stderr)
        deadline = time.monotonic() + 60
        while count_lines(timing) < rounds and time.monotonic() < deadline:
            time.sleep(0.5)
        if count_lines(timing) < rounds:
            raise RuntimeError(f"Flower finished {count_lines(timing)} of {rounds} rounds; flwr run said:\n"
                               f"{(done.stdout + done.stderr)[-3000:]}")
        time.sleep(1.0)
        sent, received, unattributed = traffic.stop()
        (run_dir / "traffic.json").write_text(json.dumps(
            {"sent": traffic.sent, "received": traffic.received, "counted": traffic.owner_ok}, indent=1))
    finally:
        if traffic is not None:
            traffic.stop()
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in reversed(procs):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        peaks = sampler.stop()
        for log in logs:
            log.close()
    records = [json.loads(line) for line in timing.read_text().splitlines() if line.strip()]
    result = RunResult("Flower 1.42", clients)
    result.rounds = records
    result.round_seconds = [float(r["seconds"]) for r in records]
    result.wall_seconds = [b["ended"] - a["ended"] for a, b in zip(records, records[1:])]
    result.model_bytes = 2 * clients * int(records[0]["model_bytes"])
    result.server_peak = peaks.tree_peak("server")
    result.client_peaks = [peaks.tree_peak(f"client-{i}") for i in range(clients)]
    result.wire_total = sent + received if traffic.available else -1
    result.notes = (f"wire bytes of connections never seen alive (not counted): {unattributed / 1e6:.0f} MB; "
                    f"server tree: {_mb(peaks.by_name('server'))}; "
                    f"client-0 tree: {_mb(peaks.by_name('client-0'))}")
    return result


def process_trees(roots: list[int]) -> list[set[int]]:
    """Each root's pid with its live descendants' pids (the root alone when it is gone)."""
    import psutil

    out = []
    for root in roots:
        try:
            proc = psutil.Process(root)
            out.append({root, *(c.pid for c in proc.children(recursive=True))})
        except psutil.Error:
            out.append({root})
    return out


def count_lines(path: Path) -> int:
    """Non-empty lines of a JSON-lines file, 0 before it exists."""
    return sum(1 for line in path.read_text().splitlines() if line.strip()) if path.exists() else 0


def _mb(named: dict[str, int]) -> str:
    return ", ".join(f"{name} {peak / 1e6:.0f} MB" for name, peak in sorted(named.items(), key=lambda kv: -kv[1]))
