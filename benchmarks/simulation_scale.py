"""How many simulated clients one machine holds: `fedstream simulate` at growing client counts, one table.

    python benchmarks/simulation_scale.py --counts 100,300,1000 --rounds 3 --num-cpus 2

Each count is a real server process on 127.0.0.1 plus Ray actors serving --clients-per-actor client ids each
(digits, IID split, every client sampled every round). Reports the round time (first round, which includes the
clients' first training and all the joins, and the median of the later rounds), actor processes and their peak
RSS, and the wall time of the whole simulation. Needs the `sim` extra (ray).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def run(count: int, per_actor: int, rounds: int, num_cpus: int, work: Path) -> dict:
    run_dir, report = work / f"sim-{count}", work / f"sim-{count}.json"
    cpus_per_client = round(num_cpus * 0.9 / count, 6)
    command = [sys.executable, "-m", "fedstream.cli", "simulate", "--clients", str(count),
               "--clients-per-actor", str(per_actor), "--cpus-per-client", str(cpus_per_client),
               "--num-cpus", str(num_cpus), "--rounds", str(rounds), "--run-dir", str(run_dir), "--report", str(report)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{count} clients failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    summary = json.loads(report.read_text())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {"clients": count, "actors": summary["processes"], "per_round": [r["clients"] for r in records],
            "first": records[0]["seconds"], "later": statistics.median(r["seconds"] for r in records[1:]),
            "rss": max(a["rss_mb"] for a in summary["actors"]), "wall": summary["seconds"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="100,300,1000")
    parser.add_argument("--clients-per-actor", type=int, default=250)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--num-cpus", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fedstream-sim-"))
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; run directories in {work}")
    print("| clients | actor processes | updates per round | round 1 s | median later round s | "
          "peak actor RSS MiB | wall s |")
    print("|---|---|---|---|---|---|---|")
    for count in (int(c) for c in args.counts.split(",")):
        r = run(count, min(args.clients_per_actor, count), args.rounds, args.num_cpus, work)
        print(f"| {r['clients']} | {r['actors']} | {'/'.join(map(str, r['per_round']))} | {r['first']:.1f} | "
              f"{r['later']:.1f} | {r['rss']:.0f} | {r['wall']:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
