"""What secure aggregation costs: round time, wire bytes and server peak memory, with and without it, same run.

    python benchmarks/secagg_overhead.py --clients 10,50,200 --rounds 3
    python benchmarks/secagg_overhead.py --clients 4 --rounds 2 --task synthetic --task-option params=25M

For each client count, two runs on the same machine: plain FedAvg (`--mode sync`) and `--secure-aggregation`,
each a real server process on 127.0.0.1 with every client sampled every round. The clients are FederatedClient
threads in this process, each with its own session over real gRPC (what one `fedstream simulate` actor does,
without Ray). Reported per run: the median round time after the first round (the first includes every join and
first model load), bytes up per round (uploads, plus the secure-aggregation messages), bytes down per round
(downloads, plus the phase payloads), and the server's peak RSS. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from fedstream.client.runner import ClientConfig, FederatedClient
from fedstream.common.tasks import load_task


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run(count: int, secure: bool, rounds: int, task_name: str, options: list[str], clip: float, work: Path) -> dict:
    run_dir = work / f"{'secagg' if secure else 'plain'}-{count}"
    port_file = run_dir.with_suffix(".port")
    flags = ["--secure-aggregation", "--secagg-clip", str(clip)] if secure else []
    task_flags = ["--task", task_name, *[f for o in options for f in ("--task-option", o)]]
    server = subprocess.Popen([sys.executable, "-m", "fedstream.cli", "server", "--insecure", "--address",
                               "127.0.0.1:0", "--port-file", str(port_file), "--run-dir", str(run_dir), "--rounds",
                               str(rounds), "--min-clients", str(count), "--round-timeout", "600",
                               "--log-level", "WARNING", "--eval-every", str(rounds), *task_flags, *flags],
                              stdout=subprocess.DEVNULL, stderr=open(run_dir.with_suffix(".log"), "w"))
    while not (port_file.exists() and port_file.read_text().strip()):
        if server.poll() is not None:
            raise RuntimeError(run_dir.with_suffix(".log").read_text()[-2000:])
        time.sleep(0.1)
    address = f"127.0.0.1:{port_file.read_text().strip()}"
    task = load_task(task_name, dict(o.split("=", 1) for o in options))
    clients = [FederatedClient(task, ClientConfig(server=address, client_id=f"c{i}", partition=(i, count),
                                                  device="cpu")) for i in range(count)]
    threads = [threading.Thread(target=c.run, daemon=True) for c in clients]
    rss = 0.0
    for t in threads:
        t.start()
    while server.poll() is None:
        rss = max(rss, peak_rss_mb(server.pid))
        time.sleep(0.2)
    for t in threads:
        t.join(timeout=60)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    later = records[1:] or records
    up = [r["bytes_up"] + r.get("secagg_exchange_bytes", 0) for r in later]
    return {"clients": count, "secure": secure, "rounds": len(records),
            "round_s": statistics.median(r["seconds"] for r in later), "first_round_s": records[0]["seconds"],
            "bytes_up": statistics.median(up), "bytes_down": statistics.median(r["bytes_down"] for r in later),
            "server_peak_rss_mb": round(rss, 1), "accuracy": records[-1].get("eval_accuracy")}


def table(results: list[dict]) -> str:
    lines = ["| clients | round s plain | round s secagg | ratio | MB up plain | MB up secagg | ratio | "
             "MB down plain | MB down secagg | server peak RSS MB plain / secagg |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    by = {(r["clients"], r["secure"]): r for r in results}
    for count in sorted({r["clients"] for r in results}):
        p, s = by.get((count, False)), by.get((count, True))
        if p is None or s is None:
            continue
        lines.append(f"| {count} | {p['round_s']:.2f} | {s['round_s']:.2f} | {s['round_s'] / p['round_s']:.2f} | "
                     f"{p['bytes_up'] / 1e6:.2f} | {s['bytes_up'] / 1e6:.2f} | {s['bytes_up'] / p['bytes_up']:.3f} | "
                     f"{p['bytes_down'] / 1e6:.2f} | {s['bytes_down'] / 1e6:.2f} | "
                     f"{p['server_peak_rss_mb']:.0f} / {s['server_peak_rss_mb']:.0f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="10,50,200")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--task", default="digits")
    parser.add_argument("--task-option", action="append", default=[])
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    work = args.work or Path(tempfile.mkdtemp(prefix="secagg-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    results = []
    for count in (int(c) for c in args.clients.split(",")):
        for secure in (False, True):
            result = run(count, secure, args.rounds, args.task, args.task_option, args.clip, work)
            print(json.dumps(result), flush=True)
            results.append(result)
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
