"""Load: N lightweight clients join one real `fedstream server` on loopback at once and run R rounds.

For each N in --clients: the server process starts (its open-file limit raised), a probe client joins and times a
Heartbeat every 100 ms until the end, N coroutine clients in a few worker processes (load_clients.py) join at once
and wait at a barrier; the driver reads the server's RSS with every client joined and idle, opens the barrier,
and the rounds run. Per N it reports: whether every client was served in every round (nothing lost), join
p50/p99, round time, server CPU per served client per round (utime + stime from /proc/<pid>/stat across the
rounds), server RSS per connected idle client ((RSS with N idle clients - RSS before any joined) / N), server
peak RSS, and heartbeat latency p50/p99/max over the whole run, folds included.

    python benchmarks/load.py --clients 1000 --rounds 3                       # digits-sized model, every client
    python benchmarks/load.py --clients 1000,5000,10000 --rounds 3 --json load.json --timeout 900
    python benchmarks/load.py --clients 1000 --model-params 25M --heavy-clients 4   # heartbeats during heavy folds

With --model-params the server runs the synthetic task of that size and samples --heavy-clients per round
(real-size downloads and uploads, a heavy fold) while all N stay connected. Each N is bounded by --timeout (every
process is killed then and the N is reported as failed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from load_clients import kind_of, raise_open_files  # noqa: E402
from procstats import cpu_seconds, machine_summary, wait_peak  # noqa: E402

FEDSTREAM = [sys.executable, "-m", "fedstream.cli"]
CLIENTS = Path(__file__).resolve().parent / "load_clients.py"
SPARE_FILES = 1024


def rss_bytes(pid: int) -> int:
    """Current resident set size (VmRSS) of a live process, 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


class RecordWatcher(threading.Thread):
    """Notes the server's CPU seconds each time metrics.jsonl gains a round record."""

    def __init__(self, path: Path, pid: int) -> None:
        super().__init__(daemon=True, name="record-watcher")
        self.path, self.pid = path, pid
        self.cpu_at_record: list[float | None] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            if self.path.exists():
                lines = sum(1 for line in self.path.read_text().splitlines() if line.strip())
                if lines > len(self.cpu_at_record):
                    cpu = cpu_seconds(self.pid)
                    self.cpu_at_record += [cpu] * (lines - len(self.cpu_at_record))
            self.halt.wait(0.02)


class ProgressReporter(threading.Thread):
    """Prints, every `every` seconds, where the workers' clients are (their .progress files), so a stall shows."""

    def __init__(self, outputs: list[Path], every: float) -> None:
        super().__init__(daemon=True, name="progress")
        self.outputs, self.every = outputs, every
        self.halt = threading.Event()

    def run(self) -> None:
        started = time.monotonic()
        while not self.halt.wait(self.every):
            phases: dict[str, int] = {}
            kinds: dict[str, int] = {}
            errors, retries = 0, 0
            for out in self.outputs:
                try:
                    state = json.loads(out.with_suffix(".progress").read_text())
                except (OSError, ValueError):
                    continue
                for phase, count in state["phases"].items():
                    phases[phase] = phases.get(phase, 0) + count
                errors += state["errors"]
                retries += state.get("retries", 0)
                for kind, count in state.get("error_kinds", {}).items():
                    kinds[kind] = kinds.get(kind, 0) + count
            summary = ", ".join(f"{count} {phase}" for phase, count in sorted(phases.items()))
            by_kind = ", ".join(f"{count} {kind}" for kind, count in sorted(kinds.items(), key=lambda kv: -kv[1]))
            print(f"  {time.monotonic() - started:.0f} s after go: {summary}; {errors} errors, {retries} retried calls"
                  f"{' (' + by_kind + ')' if by_kind else ''}", flush=True)


@dataclass
class LoadResult:
    """What one N measured; seconds unless named otherwise."""

    clients: int
    rounds: int
    model: str
    workers: int
    ok: bool = False
    failure: str = ""
    server_exit: int | None = None
    joined: int = 0
    join_p50: float = float("nan")
    join_p99: float = float("nan")
    join_max: float = float("nan")
    per_round_expected: int = 0
    served_per_round: list[int] = field(default_factory=list)
    clients_served_every_round: int = 0
    lost_rounds: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    retries: int = 0
    retry_kinds: dict[str, int] = field(default_factory=dict)
    round_seconds: list[float] = field(default_factory=list)
    server_cpu_seconds: float = float("nan")
    cpu_ms_per_client_round: float = float("nan")
    rss_before_join: int = 0
    rss_idle_joined: int = 0
    rss_per_idle_client: float = float("nan")
    server_peak_rss: int = 0
    heartbeats: int = 0
    heartbeat_failures: int = 0
    heartbeat_errors: list[str] = field(default_factory=list)
    heartbeat_p50: float = float("nan")
    heartbeat_p99: float = float("nan")
    heartbeat_max: float = float("nan")
    heartbeat_p99_during_rounds: float = float("nan")
    heartbeat_max_during_rounds: float = float("nan")
    work_dir: str = ""


def server_command(args: argparse.Namespace, n: int, port_file: Path, run_dir: Path) -> list[str]:
    """The real server: every client (N plus the probe) per round, or --heavy-clients of a --model-params model."""
    total = n + 1
    if args.model_params:
        task = ["--task", "synthetic", "--task-option", f"params={args.model_params}", "--task-option", "steps=0",
                "--clients-per-round", str(args.heavy_clients), "--min-clients", str(args.heavy_clients)]
    else:
        task = ["--task", "digits", "--task-option", f"hidden={args.hidden}", "--min-clients", str(total)]
    extra = ["--max-workers", str(args.max_workers)] if args.max_workers else []
    return FEDSTREAM + ["server", "--insecure", "--join-rate", "0", "--address", "127.0.0.1:0", "--port-file",
                        str(port_file), "--run-dir", str(run_dir), "--rounds", str(args.rounds), "--round-timeout",
                        str(args.round_timeout), "--wait-for-clients", str(args.timeout), "--session-timeout",
                        str(args.timeout), "--log-level", "WARNING", *task, *extra]


def _wait_for(condition, deadline: float, watched: list[subprocess.Popen], what: str) -> None:
    while not condition():
        dead = [p for p in watched if p.poll() is not None]
        if dead:
            raise RuntimeError(f"{what}: {dead[0].args[:6]} exited with {dead[0].returncode} first")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within --timeout")
        time.sleep(0.05)


def run_load(args: argparse.Namespace, n: int) -> LoadResult:
    """One federation of n clients plus the probe; never raises for a failed run, it reports it."""
    workers_count = args.processes or max(2, -(-n // args.clients_per_process))
    result = LoadResult(n, args.rounds, f"synthetic {args.model_params}" if args.model_params
                        else f"digits hidden={args.hidden}", workers_count)
    work = Path(tempfile.mkdtemp(prefix=f"fedstream-load-{n}-"))
    result.work_dir = str(work)
    run_dir, port_file, go_file = work / "run", work / "server.port", work / "go"
    deadline = time.monotonic() + args.timeout
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    wanted_files = n + SPARE_FILES
    with open(work / "server.log", "w") as log:
        server = subprocess.Popen(server_command(args, n, port_file, run_dir), stdout=log, stderr=subprocess.STDOUT,
                                  env=env, preexec_fn=lambda: raise_open_files(wanted_files))
    clients: list[tuple[subprocess.Popen, Path]] = []
    watcher = RecordWatcher(run_dir / "metrics.jsonl", server.pid)
    ended, cpu_at_go, go_at, ended_at = None, None, float("inf"), None
    reporter: ProgressReporter | None = None
    try:
        _wait_for(lambda: port_file.exists() and port_file.read_text().strip(), deadline, [server], "server start")
        address = f"127.0.0.1:{port_file.read_text().strip()}"
        time.sleep(args.settle)
        result.rss_before_join = rss_bytes(server.pid)
        common = ["--server", address, "--go-file", str(go_file)]
        probe_out = work / "probe.json"
        clients.append((subprocess.Popen([sys.executable, str(CLIENTS), "probe", "--out", str(probe_out), *common],
                                         env=env), probe_out))
        start_at = time.time() + args.warmup
        per = -(-n // workers_count)
        for w in range(workers_count):
            first, count = w * per, min(per, n - w * per)
            if count <= 0:
                break
            out = work / f"worker{w}.json"
            clients.append((subprocess.Popen([sys.executable, str(CLIENTS), "worker", "--out", str(out), "--first",
                                              str(first), "--count", str(count), "--start-at", str(start_at), *common],
                                             env=env), out))
        _wait_for(lambda: all(out.with_suffix(".joined").exists() for _, out in clients), deadline,
                  [server] + [p for p, _ in clients], "waiting for every client to join")
        time.sleep(args.settle)
        result.rss_idle_joined = rss_bytes(server.pid)
        cpu_at_go = cpu_seconds(server.pid)
        watcher.start()
        go_file.write_text("go")
        go_at = time.time()
        if args.progress:
            reporter = ProgressReporter([out for _, out in clients[1:]], args.progress)
            reporter.start()
        ended = wait_peak(server, max(1.0, deadline - time.monotonic()))
        ended_at = time.time()
        result.server_exit, result.server_peak_rss = ended.code, ended.peak_rss
        for process, _ in clients:
            process.wait(timeout=max(1.0, deadline - time.monotonic()))
    except (RuntimeError, TimeoutError, subprocess.TimeoutExpired) as exc:
        result.failure = str(exc)
    finally:
        watcher.halt.set()
        if reporter is not None:
            reporter.halt.set()
        for process in [server, *(p for p, _ in clients)]:
            if process.poll() is None:
                process.kill()
                process.wait()
        if watcher.is_alive():
            watcher.join(timeout=5)
    _summarise(result, args, n, clients, run_dir, watcher, cpu_at_go, ended, (go_at, ended_at or time.time()))
    if result.ok and not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return result


def _summarise(result: LoadResult, args: argparse.Namespace, n: int, clients: list[tuple[subprocess.Popen, Path]],
               run_dir: Path, watcher: RecordWatcher, cpu_at_go: float | None, ended,
               window: tuple[float, float]) -> None:
    outputs = [json.loads(path.read_text()) for _, path in clients if path.exists()]
    probe = next((o for o in outputs if isinstance(o, dict)), None)
    everyone = [r for o in outputs for r in (o if isinstance(o, list) else [o])]
    metrics = run_dir / "metrics.jsonl"
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()] if metrics.exists() else []
    joins = [r["join_s"] for r in everyone if "join_s" in r]
    result.joined = len(joins)
    result.join_p50, result.join_p99 = percentile(joins, 50), percentile(joins, 99)
    result.join_max = max(joins, default=float("nan"))
    result.errors = [e for r in everyone for e in r.get("errors", [])]
    retried = [kind_of(e) for r in everyone for e in r.get("retries", [])]
    result.retries = len(retried)
    result.retry_kinds = {kind: retried.count(kind) for kind in sorted(set(retried))}
    result.per_round_expected = args.heavy_clients if args.model_params else n + 1
    result.served_per_round = [sum(1 for r in everyone if k in r.get("rounds", [])) for k in range(1, args.rounds + 1)]
    wanted = list(range(1, args.rounds + 1))
    result.clients_served_every_round = sum(1 for r in everyone if sorted(r.get("rounds", [])) == wanted)
    result.lost_rounds = [rec["round"] for rec in records
                          if rec["clients"] != rec["selected"] or rec["selected"] != result.per_round_expected]
    result.lost_rounds += [k for k, served in enumerate(result.served_per_round, 1)
                           if served != result.per_round_expected and k not in result.lost_rounds]
    result.round_seconds = [float(rec["seconds"]) for rec in records]
    served = sum(result.served_per_round)
    cpu_end = next((c for c in reversed(watcher.cpu_at_record) if c is not None), None)
    if cpu_end is None and ended is not None:
        cpu_end = ended.cpu_seconds
    if cpu_at_go is not None and cpu_end is not None and served:
        result.server_cpu_seconds = cpu_end - cpu_at_go
        result.cpu_ms_per_client_round = 1e3 * result.server_cpu_seconds / served
    if result.rss_idle_joined and result.rss_before_join:
        result.rss_per_idle_client = (result.rss_idle_joined - result.rss_before_join) / (n + 1)
    if probe is not None:
        beats = probe.get("heartbeats", [])
        answered = [seconds for _, seconds, error in beats if not error]
        result.heartbeats, result.heartbeat_failures = len(beats), len(beats) - len(answered)
        result.heartbeat_errors = sorted({error for _, _, error in beats if error})[:5]
        result.heartbeat_p50, result.heartbeat_p99 = percentile(answered, 50), percentile(answered, 99)
        result.heartbeat_max = max(answered, default=float("nan"))
        start, end = window
        during = [seconds for stamp, seconds, error in beats if not error and start <= stamp <= end]
        result.heartbeat_p99_during_rounds = percentile(during, 99)
        result.heartbeat_max_during_rounds = max(during, default=float("nan"))
    all_served = result.clients_served_every_round == result.per_round_expected if not args.model_params else True
    result.ok = (not result.failure and result.server_exit == 0 and result.joined == n + 1 and all_served
                 and not result.lost_rounds and not result.errors and len(records) == args.rounds)
    if not result.ok and not result.failure:
        result.failure = (f"server exit {result.server_exit}, {result.joined}/{n + 1} joined, "
                          f"{len(records)}/{args.rounds} rounds recorded, lost rounds {result.lost_rounds}, "
                          f"{len(result.errors)} errors")


def _ms(seconds: float) -> str:
    return "n/a" if seconds != seconds else f"{seconds * 1e3:,.0f} ms"


def table(results: list[LoadResult]) -> str:
    """The per-N table: service, joins, round time, server CPU and memory per client, heartbeat latency."""
    lines = ["| clients | served every round | lost rounds | join p50 | join p99 | round s (median; all) | "
             "server CPU ms per client-round | server RSS per idle client | server peak RSS | heartbeat p50 | "
             "heartbeat p99 | heartbeat max (during rounds) | calls retried | result |",
             "|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        rounds = "; ".join(f"{s:.2f}" for s in r.round_seconds) or "none"
        served = (f"{r.clients_served_every_round}/{r.per_round_expected}" if r.per_round_expected == r.clients + 1
                  else "/".join(str(s) for s in r.served_per_round) + f" of {r.per_round_expected} per round")
        median = statistics.median(r.round_seconds[1:] or r.round_seconds) if r.round_seconds else float("nan")
        lines.append(
            f"| {r.clients:,} | {served} | {len(r.lost_rounds)} | {_ms(r.join_p50)} | {_ms(r.join_p99)} | "
            f"{median:.2f} ({rounds}) | {r.cpu_ms_per_client_round:.2f} | "
            f"{r.rss_per_idle_client / 1e3:,.1f} KB | {r.server_peak_rss / 2**20:,.0f} MiB | {_ms(r.heartbeat_p50)} | "
            f"{_ms(r.heartbeat_p99)} | {_ms(r.heartbeat_max)} ({_ms(r.heartbeat_max_during_rounds)})"
            f"{f', {r.heartbeat_failures} of {r.heartbeats} failed' if r.heartbeat_failures else ''} | "
            f"{r.retries:,} | "
            f"{'nothing lost' if r.ok else 'FAILED: ' + r.failure} |")
    return "\n".join(lines)


def parse_counts(text: str) -> list[int]:
    try:
        values = [int(v.replace("_", "")) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"client counts must be integers separated by commas, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"client counts must be >= 1, got {text!r}")
    return values


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=parse_counts, default=parse_counts("1000"),
                   help="comma-separated client counts, run one after another (e.g. 1000,5000,10000)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--processes", type=int, default=0,
                   help="worker processes the clients are spread over (default: one per --clients-per-process, "
                        "at least 2)")
    p.add_argument("--clients-per-process", type=int, default=2500)
    p.add_argument("--hidden", type=int, default=16, help="hidden width of the digits MLP (the model's size)")
    p.add_argument("--model-params", default="",
                   help="run the synthetic task of this size (e.g. 25M) with --heavy-clients per round instead")
    p.add_argument("--heavy-clients", type=int, default=4, help="clients sampled per round with --model-params")
    p.add_argument("--max-workers", type=int, default=0,
                   help="pass --max-workers to the server (its gRPC worker threads; 0: the server's default)")
    p.add_argument("--round-timeout", type=float, default=300.0)
    p.add_argument("--warmup", type=float, default=5.0, help="seconds for workers to start before joining at once")
    p.add_argument("--settle", type=float, default=1.0, help="seconds to wait before each RSS reading")
    p.add_argument("--timeout", type=float, default=600.0, help="hard bound on each client count's run")
    p.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    p.add_argument("--progress", type=float, default=30.0,
                   help="print where the clients are every this many seconds during the rounds (0: never)")
    p.add_argument("--keep", action="store_true", help="keep each work directory (server log, run dir) after success")
    args = p.parse_args()
    if args.model_params and args.heavy_clients < 1:
        p.error(f"--heavy-clients must be >= 1 with --model-params, got {args.heavy_clients}")
    raise_open_files(max(args.clients) + SPARE_FILES)
    command = "python benchmarks/load.py " + " ".join(sys.argv[1:])
    print(f"command: {command}\nmachine: {machine_summary()}", flush=True)
    results = []
    for n in args.clients:
        started = time.monotonic()
        results.append(run_load(args, n))
        print(f"{n} clients: {'ok' if results[-1].ok else 'FAILED'} in {time.monotonic() - started:.0f} s "
              f"(work dir {results[-1].work_dir}{'' if not results[-1].ok or args.keep else ', removed'})", flush=True)
    print()
    print(table(results))
    for r in results:
        if r.errors:
            print(f"{r.clients} clients, first errors:", *r.errors[:5], sep="\n  ")
        if r.retries:
            print(f"{r.clients} clients, calls retried after the server shed them:",
                  ", ".join(f"{count} {kind}" for kind, count in r.retry_kinds.items()))
        if r.heartbeat_errors:
            print(f"{r.clients} clients, failed heartbeats:", *r.heartbeat_errors, sep="\n  ")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"command": command, "machine": machine_summary(),
                                         "results": [asdict(r) for r in results]}, indent=1))
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
