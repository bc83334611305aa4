"""Round benchmark: fedstream and Flower on the same workload, side by side, plus the raw gRPC floor.

The workload is fedstream's `synthetic` task (an MLP of --params parameters, float32) with no-op local
training, every process on this machine: a round is moving the model down to N clients, N updates up, and
aggregating them. Everything in one table is measured in this one run.

    python benchmarks/round_bench.py --clients 1,4,8,16 --params 25M --rounds 3

Flower runs in its own virtualenv (benchmarks/.envs/flower, created on first use) in its real deployment mode.
`--systems fedstream` skips Flower and the floor (the smoke test uses that).
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from fedstream_run import RunResult, run_fedstream  # noqa: E402
from grpc_floor import Floor, measure  # noqa: E402
from procstats import machine_summary, wait_peak  # noqa: E402

FLOWER_BYTES_PER_CLIENT = 1.8e9
FLOWER_FIXED_BYTES = 3.5e9


def parse_clients(text: str) -> list[int]:
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"client counts must be integers separated by commas, got {text!r}") from None
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError(f"client counts must be >= 1, got {text!r}")
    return values


def base_rss() -> int:
    """Peak RSS of a process that imported everything a fedstream server or client imports, and nothing else."""
    code = ("import torch, grpc, fedstream.server.app, fedstream.client.runner, fedstream.cli.commands; "
            "from fedstream.common.allocator import tune_malloc; tune_malloc()")
    proc = subprocess.Popen([sys.executable, "-c", code])
    return wait_peak(proc, 120).peak_rss


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def slope(points: list[tuple[int, int]]) -> float | None:
    """Least-squares slope of peak RSS (bytes) against client count."""
    if len({x for x, _ in points}) < 2:
        return None
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    return sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)


def _mb(value: float) -> str:
    return f"{value / 1e6:,.0f} MB"


def row(r: RunResult, rounds: int) -> str:
    sec, wall = median(r.round_seconds), median(r.wall_seconds)
    rate = r.model_bytes / sec / 1e6 if sec == sec and sec > 0 else float("nan")
    cpu = median([sum(c) for c in r.cpu_per_round]) if r.cpu_per_round else float("nan")
    client_peak = max(r.client_peaks) if r.client_peaks else 0
    return (f"| {r.system} | {r.clients} | {sec:.2f} | {wall:.2f} | {rate:,.0f} | {_mb(r.server_peak)} | "
            f"{_mb(client_peak)} | {_mb(r.wire_total / max(rounds, 1))} | {cpu:.2f} |")


def report(results: list[RunResult], floor: Floor | None, base: int, model_bytes: int, rounds: int) -> str:
    lines = ["| system | clients | round s (median) | wall s/round (median) | MB/s model data | server peak RSS | "
             "client peak RSS (max) | wire MB/round | CPU s/round |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [row(r, rounds) for r in results]
    out = ["\n".join(lines), ""]
    if floor is not None:
        out.append(f"raw gRPC floor (bare grpcio, 2 processes, same bytes): {floor.row()}")
    by_system: dict[str, dict[int, RunResult]] = {}
    for r in results:
        by_system.setdefault(r.system, {})[r.clients] = r
    fed, flower = by_system.get("fedstream", {}), by_system.get("Flower 1.42", {})
    for n in sorted(set(fed) & set(flower)):
        a, b = fed[n], flower[n]
        out.append(f"speed-up at {n} clients: {median(b.round_seconds) / median(a.round_seconds):.1f}x per round "
                   f"(round seconds), {median(b.wall_seconds) / median(a.wall_seconds):.1f}x (wall time per round)")
    if floor is not None:
        for n, r in sorted(fed.items()):
            rate = r.model_bytes / median(r.round_seconds) / 1e9
            out.append(f"fedstream at {n} clients moves model data at {rate:.2f} GB/s = "
                       f"{100 * rate / floor.upload:.0f}% of the raw gRPC upload floor "
                       f"({100 * rate / floor.upload_transport:.0f}% of its transport-only rate)")
    budget = base + 3 * model_bytes
    out.append(f"memory budget base + 3 x model = {_mb(base)} + 3 x {_mb(model_bytes)} = {_mb(budget)} "
               "(base: peak RSS of a process that only imported fedstream, torch and grpc)")
    for system, runs in by_system.items():
        s = slope([(n, r.server_peak) for n, r in runs.items()])
        worst_server = max(r.server_peak for r in runs.values())
        worst_client = max(max(r.client_peaks or [0]) for r in runs.values())
        text = f"{system}: server peak RSS slope {s / 1e6:+,.1f} MB per client" if s is not None else f"{system}:"
        text += (f"; worst server peak {_mb(worst_server)} ({'within' if worst_server <= budget else 'OVER'} budget), "
                 f"worst client peak {_mb(worst_client)} ({'within' if worst_client <= budget else 'OVER'} budget)")
        out.append(text)
    for r in results:
        if r.notes:
            out.append(f"{r.system} {r.clients} clients: {r.notes}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=parse_clients, default=parse_clients("1,4,8,16"))
    parser.add_argument("--flower-clients", type=parse_clients, default=None,
                        help="client counts for Flower (default: those of --clients up to 8; 16 Flower clients "
                             "need more than 24 GiB)")
    parser.add_argument("--params", default="25M")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--systems", default="grpc,fedstream,flower",
                        help="comma-separated subset of grpc (the floor), fedstream, flower")
    parser.add_argument("--workdir", type=Path, default=HERE / "out")
    parser.add_argument("--floor-reps", type=int, default=5)
    args = parser.parse_args(argv)
    systems = {s.strip() for s in args.systems.split(",") if s.strip()}
    unknown = systems - {"grpc", "fedstream", "flower"}
    if unknown:
        parser.error(f"--systems: unknown {sorted(unknown)}; choose from grpc, fedstream, flower")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    workdir = args.workdir / f"round-bench-{stamp}"
    workdir.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/round_bench.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    header = [f"command: {command}", f"machine: {machine_summary()}", f"started: {stamp}"]
    print("\n".join(header), flush=True)

    from fedstream.common.tasks import load_task
    from fedstream.common.tensors import state_nbytes

    model_bytes = state_nbytes(load_task("synthetic", {"params": args.params, "steps": "0"}).make_model().state_dict())
    base = base_rss()
    results: list[RunResult] = []
    floor = None
    if "grpc" in systems:
        floor = measure(model_bytes, 1 << 20, args.floor_reps, workdir)
        print(f"floor: {floor.row()}", flush=True)
    if "fedstream" in systems:
        for n in args.clients:
            started = time.monotonic()
            r = run_fedstream(workdir, n, args.params, args.rounds)
            results.append(r)
            print(f"fedstream {n} clients done in {time.monotonic() - started:.0f} s: {row(r, args.rounds)}", flush=True)
    if "flower" in systems:
        from flower_run import run_flower

        for n in args.flower_clients or [c for c in args.clients if c <= 8]:
            need = FLOWER_FIXED_BYTES + FLOWER_BYTES_PER_CLIENT * n
            available = psutil.virtual_memory().available
            if available < need:
                print(f"skipping Flower with {n} clients: it needs about {need / 1e9:.1f} GB, "
                      f"{available / 1e9:.1f} GB available", flush=True)
                continue
            started = time.monotonic()
            r = run_flower(workdir, n, args.params, args.rounds)
            results.append(r)
            print(f"Flower {n} clients done in {time.monotonic() - started:.0f} s: {row(r, args.rounds)}", flush=True)
    text = report(results, floor, base, model_bytes, args.rounds)
    print("\n" + text)
    (workdir / "report.md").write_text("\n".join(header) + "\n\n" + text + "\n")
    (workdir / "results.json").write_text(json.dumps(
        {"command": command, "machine": machine_summary(), "model_bytes": model_bytes, "base_rss": base,
         "floor": asdict(floor) if floor else None, "runs": [asdict(r) for r in results]}, indent=1))
    print(f"\nraw results: {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
