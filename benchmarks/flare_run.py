"""One NVIDIA FLARE 2.9 federation in its POC mode: a FLARE server, N FLARE clients and a job submitted through the
admin API, on 127.0.0.1.

FLARE lives in its own virtualenv (flare_env.py). `nvflare poc prepare -n N` provisions the server, the sites and
the admin kit (mutual TLS, as FLARE's POC always runs); the benchmark then starts the server and each site with the
same command their startup/sub_start.sh runs (so it owns their process trees and can read their peaks), and
flare_app/job.py submits FLARE's PyTorch FedAvg recipe on the same workload as fedstream's `synthetic` task with
no-op training. A server component (flare_app/round_timer.py) writes each round's wall time, round started →
aggregate ready, the span Flower's app times.
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
from flare_env import ensure_flare_env
from flower_run import count_lines, process_trees
from procstats import PortTraffic, TreeSampler

APP_DIR = Path(__file__).resolve().parent / "flare_app"
PORT = 8002  # the port `nvflare poc prepare` provisions the server on
LABEL = "FLARE 2.9"
PROJECT = "example_project"


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT leftovers do not count
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _wait_listening(port: int, process: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"FLARE server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"FLARE server did not listen on {port} within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def _wait_registered(log: Path, clients: int, process: subprocess.Popen, timeout: float = 180.0) -> None:
    """Until the server's log says all N sites joined (FLARE logs 'Total clients: N')."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"FLARE server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        if f"Total clients: {clients}" in log.read_text(errors="replace"):
            return
        time.sleep(0.5)
    raise RuntimeError(f"only some of {clients} FLARE sites registered within {timeout:.0f} s:\n"
                       f"{log.read_text(errors='replace')[-3000:]}")


def run_flare(workdir: Path, clients: int, params: str, rounds: int, timeout: float = 1800.0) -> RunResult:
    """Runs one FLARE federation to the end and returns the same measurements as run_flower."""
    bin_dir = ensure_flare_env()
    if not _port_free(PORT):
        raise RuntimeError(f"port {PORT}, where FLARE's POC server listens, is taken on 127.0.0.1; stop whatever holds "
                           "it (another FLARE POC?) and run again")
    run_dir = workdir / f"flare-{clients}c"
    shutil.rmtree(run_dir, ignore_errors=True)
    (run_dir / "home").mkdir(parents=True)
    poc = run_dir / "poc"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update({"HOME": str(run_dir / "home"), "NVFLARE_POC_WORKSPACE": str(poc), "PYTHONUNBUFFERED": "1",
                "OMP_NUM_THREADS": "1", "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"})
    prepared = subprocess.run([str(bin_dir / "nvflare"), "poc", "prepare", "-n", str(clients), "--force"], env=env,
                              cwd=run_dir, capture_output=True, text=True, timeout=300)
    (run_dir / "poc-prepare.log").write_text(prepared.stdout + prepared.stderr)
    if prepared.returncode != 0:
        raise RuntimeError(f"nvflare poc prepare -n {clients} failed:\n{(prepared.stdout + prepared.stderr)[-3000:]}")
    kits = poc / PROJECT / "prod_00"
    timing = run_dir / "rounds.jsonl"
    sampler = TreeSampler()
    logs: list = []
    procs: list[subprocess.Popen] = []
    traffic: PortTraffic | None = None

    def start(name: str, module: str, kit: Path, config: str, extra: list[str]) -> subprocess.Popen:
        log = open(run_dir / f"{name}.log", "w")
        logs.append(log)
        process = subprocess.Popen(
            [str(bin_dir / "python"), "-u", "-m", module, "-m", str(kit), "-s", config, "--set", "secure_train=true",
             *extra, "org=nvidia", "config_folder=config"], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=kit)
        procs.append(process)
        return process

    try:
        server = start("server", "nvflare.private.fed.app.server.server_train", kits / "server", "fed_server.json", [])
        sampler.watch(server.pid, "server")
        sampler.start()
        _wait_listening(PORT, server, run_dir / "server.log")
        traffic = PortTraffic(PORT, interval=0.05)
        sites = []
        for i in range(1, clients + 1):
            site = start(f"site-{i}", "nvflare.private.fed.app.client.client_train", kits / f"site-{i}",
                         "fed_client.json", [f"uid=site-{i}"])
            sites.append(site)
            sampler.watch(site.pid, f"client-{i - 1}")
        _wait_registered(run_dir / "server.log", clients, server)
        traffic.only_from(lambda pid: any(pid in tree for tree in process_trees([s.pid for s in sites])))
        traffic.start()
        done = subprocess.run([str(bin_dir / "python"), str(APP_DIR / "job.py"), "--admin-kit",
                               str(kits / "admin@nvidia.com"), "--clients", str(clients), "--params", params,
                               "--rounds", str(rounds), "--timing-file", str(timing), "--job-dir",
                               str(run_dir / "jobs"), "--timeout", str(timeout)],
                              env=env, cwd=run_dir, capture_output=True, text=True, timeout=timeout + 120)
        (run_dir / "job.log").write_text(done.stdout + done.stderr)
        if done.returncode != 0 or count_lines(timing) < rounds:
            raise RuntimeError(f"FLARE finished {count_lines(timing)} of {rounds} rounds (job.py exit "
                               f"{done.returncode}):\n{(done.stdout + done.stderr)[-3000:]}")
        time.sleep(1.0)
        sent, received, unattributed = traffic.stop()
    finally:
        if traffic is not None:
            traffic.stop()
        _stop(procs)
        peaks = sampler.stop()
        for log in logs:
            log.close()
    records = [json.loads(line) for line in timing.read_text().splitlines() if line.strip()]
    result = RunResult(LABEL, clients)
    result.rounds = records
    result.round_seconds = [float(r["seconds"]) for r in records]
    result.wall_seconds = [b["ended"] - a["ended"] for a, b in zip(records, records[1:])]
    result.model_bytes = 2 * clients * int(records[0]["model_bytes"])
    result.server_peak = peaks.tree_peak("server")
    result.client_peaks = [peaks.tree_peak(f"client-{i}") for i in range(clients)]
    result.wire_total = sent + received if traffic.available else -1
    result.notes = (f"wire bytes of connections never seen alive (not counted): {unattributed / 1e6:.0f} MB; "
                    f"server tree: {_mb(peaks.by_name('server'))}; client-0 tree: {_mb(peaks.by_name('client-0'))}")
    return result


def _stop(procs: list[subprocess.Popen]) -> None:
    """Terminates each FLARE process with its job processes (children it spawned per job), then waits."""
    for proc in reversed(procs):
        for pid in [*process_trees([proc.pid])[0] - {proc.pid}, proc.pid]:
            try:
                os.kill(pid, 15)
            except OSError:
                pass
    for proc in reversed(procs):
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _mb(named: dict[str, int]) -> str:
    return ", ".join(f"{name} {peak / 1e6:.0f} MB" for name, peak in sorted(named.items(), key=lambda kv: -kv[1]))
