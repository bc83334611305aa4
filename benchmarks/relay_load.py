"""Relay load: 2 relays × N lightweight clients against 2N clients on one coordinator, in the same run.

Both layouts run the same digits MLP for R rounds with load.py's coroutine clients (no torch in them). Per
layout: round time at the top, the top coordinator's CPU seconds per round (utime + stime read from /proc each
time its metrics.jsonl gains a line; round 1 also holds start-up, so the table averages rounds 2..R), its peak
RSS (VmHWM at exit), and the model bytes that crossed the top per round (bytes_up + bytes_down of its records:
R relays move R model copies each way instead of 2N).

    python benchmarks/relay_load.py --clients 200 --rounds 4          # 2 × 200 behind relays vs 400 direct
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from procstats import cpu_seconds, wait_peak  # noqa: E402

FEDSTREAM = [sys.executable, "-m", "fedstream.cli"]
LOAD = HERE / "load.py"
RELAYS = 2


class RecordWatcher(threading.Thread):
    """The top's CPU seconds each time its metrics.jsonl gains a round record."""

    def __init__(self, path: Path, pid: int) -> None:
        super().__init__(daemon=True)
        self.path, self.pid = path, pid
        self.cpu: list[float] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            lines = len(self.path.read_text().splitlines()) if self.path.exists() else 0
            while len(self.cpu) < lines:
                value = cpu_seconds(self.pid)
                if value is None:
                    return
                self.cpu.append(value)
            time.sleep(0.02)


@dataclass
class Layout:
    name: str
    clients: int
    rounds: list[dict] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    peak_rss: int = 0
    code: int = -1


def _start(cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)


def _port(path: Path, process: subprocess.Popen, deadline: float) -> str:
    while not (path.exists() and path.read_text().strip()):
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{path.stem} did not start; see {path.with_suffix('.log')}")
        time.sleep(0.05)
    return f"127.0.0.1:{path.read_text().strip()}"


def run_layout(args: argparse.Namespace, relays: bool, work: Path) -> Layout:
    total = RELAYS * args.clients
    layout = Layout("2 relays" if relays else "one coordinator", total)
    work.mkdir(parents=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    deadline = time.monotonic() + args.timeout
    top_port = work / "top.port"
    top = _start(FEDSTREAM + ["server", "--insecure", "--join-rate", "0", "--address", "127.0.0.1:0", "--port-file",
                              str(top_port), "--run-dir", str(work / "top"), "--rounds", str(args.rounds),
                              "--min-clients", str(RELAYS if relays else total), "--round-timeout",
                              str(args.round_timeout), "--wait-for-clients", str(args.timeout), "--task", "digits",
                              "--task-option", f"hidden={args.hidden}", "--session-timeout", "60",
                              "--relay-ids", ",".join(f"r{i}" for i in range(RELAYS)), "--log-level", "WARNING"],
                 work / "top.log", env)
    processes = [top]
    try:
        top_address = _port(top_port, top, deadline)
        watcher = RecordWatcher(work / "top" / "metrics.jsonl", top.pid)
        watcher.start()
        targets = [top_address] * RELAYS
        if relays:
            targets = []
            for i in range(RELAYS):
                port_file = work / f"r{i}.port"
                processes.append(_start(FEDSTREAM + ["relay", "--upstream", top_address, "--address", "127.0.0.1:0",
                                                     "--insecure", "--upstream-insecure", "--client-id", f"r{i}",
                                                     "--min-clients", str(args.clients), "--round-timeout",
                                                     str(args.round_timeout), "--join-rate", "0", "--run-dir",
                                                     str(work / f"r{i}"), "--port-file", str(port_file),
                                                     "--log-level", "WARNING"], work / f"r{i}.log", env))
                targets.append(_port(port_file, processes[-1], deadline))
        start_at = time.time() + args.warmup
        for i, address in enumerate(targets):
            processes.append(_start([sys.executable, str(LOAD), "--worker", "--server", address, "--first",
                                     str(i * args.clients), "--count", str(args.clients), "--start-at", str(start_at),
                                     "--out", str(work / f"worker{i}.json")], work / f"worker{i}.log", env))
        ended = wait_peak(top, max(1.0, deadline - time.monotonic()))
        watcher.done.set()
        watcher.join(timeout=5)
        layout.code, layout.peak_rss, layout.cpu = ended.code, ended.peak_rss, watcher.cpu
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    metrics = work / "top" / "metrics.jsonl"
    layout.rounds = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    return layout


def table(layouts: list[Layout], rounds: int) -> str:
    rows = ["| layout | leaf clients | top sessions | round time (mean of rounds 2..R) | top CPU s / round | "
            "top peak RSS | top bytes / round (up + down) | leaves counted per round |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for layout in layouts:
        later = layout.rounds[1:] or layout.rounds
        seconds = sum(r["seconds"] for r in later) / max(len(later), 1)
        cpu = [b - a for a, b in zip(layout.cpu, layout.cpu[1:])]
        per_round = sum(cpu) / len(cpu) if cpu else float("nan")
        moved = sum(r["bytes_up"] + r["bytes_down"] for r in later) / max(len(later), 1)
        leaves = [r.get("leaf_clients", r["clients"]) for r in layout.rounds]
        rows.append(f"| {layout.name} | {layout.clients} | {layout.rounds[0]['selected'] if layout.rounds else 0} | "
                    f"{seconds:.2f} s | {per_round:.2f} s | {layout.peak_rss / 2**20:.0f} MiB | "
                    f"{moved / 1e6:.3f} MB | {leaves} |")
    return "\n".join(rows)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=200, help="lightweight clients per relay (the flat layout gets 2×)")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--hidden", type=int, default=16, help="hidden width of the digits MLP (the model's size)")
    p.add_argument("--round-timeout", type=float, default=120.0)
    p.add_argument("--warmup", type=float, default=5.0, help="seconds for workers to connect before joining at once")
    p.add_argument("--timeout", type=float, default=300.0, help="hard bound on each layout")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fedstream-relay-load-"))
    layouts = [run_layout(args, False, work / "flat"), run_layout(args, True, work / "relays")]
    print(f"relay load: digits MLP hidden={args.hidden}, {args.rounds} rounds, {args.clients} clients per relay; "
          f"exit codes {[l.code for l in layouts]}; work dir {work}")
    print(table(layouts, args.rounds))
    ok = all(l.code == 0 and len(l.rounds) == args.rounds for l in layouts)
    if ok and not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
