"""Round benchmark: fedstream and Flower on the same workload, side by side, plus the raw gRPC floor.

The workload is fedstream's `synthetic` task (an MLP of --params parameters, float32) with no-op local
training, every process on this machine: a round is moving the model down to N clients, N updates up, and
aggregating them. Everything in one table is measured in this one run.

    python benchmarks/round_bench.py --clients 1,4,8,16 --params 25M --rounds 3

Flower and NVIDIA FLARE run in their own virtualenvs (benchmarks/.envs/flower and benchmarks/.envs/flare, created
on first use) as real processes: Flower in its deployment mode, FLARE in its POC mode. `--systems fedstream` skips
the peers and the floor (the smoke test uses that).

`--baseline REV` (a commit id, branch or HEAD~1) adds `fedstream@REV`: that revision exported with git archive
into benchmarks/.envs/rev-<sha>/ and run through a PYTHONPATH shim on the same interpreter, right beside the
working tree's run at every client count, so the `vs REV` column is a same-run ratio of median round seconds.

    python benchmarks/round_bench.py --clients 4,8 --params 25M --rounds 5 --baseline HEAD~1 \
        --systems grpc,fedstream,flower,flare
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, replace
from datetime import datetime
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from fedstream_run import RunResult, run_fedstream  # noqa: E402
from grpc_floor import Floor, measure_elsewhere  # noqa: E402
from procstats import machine_summary, vm_hwm, wait_peak  # noqa: E402
from revision import Revision, prepare_revision  # noqa: E402

FLOWER_BYTES_PER_CLIENT = 1.8e9
FLOWER_FIXED_BYTES = 3.5e9
SYSTEMS = ("grpc", "fedstream", "flower", "flare")
FLARE_LABEL = "FLARE 2.9"


def parse_clients(text: str) -> list[int]:
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"client counts must be integers separated by commas, got {text!r}") from None
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError(f"client counts must be >= 1, got {text!r}")
    return values


SERVER_BASE = "import torch, grpc, fedstream.server.transport.server, fedstream.cli.commands"
CLIENT_BASE = ("import torch, grpc, fedstream.client.runner, fedstream.cli.commands\n"
               "from torch.utils.data import DataLoader, TensorDataset\n"
               "net = torch.nn.Linear(4, 2); opt = torch.optim.SGD(net.parameters(), lr=0.1)\n"
               "for x, y in DataLoader(TensorDataset(torch.randn(8, 4), torch.randint(0, 2, (8,))), batch_size=4):\n"
               "    opt.zero_grad(); torch.nn.functional.cross_entropy(net(x), y).backward(); opt.step()")


def base_rss(code: str) -> int:
    """Peak RSS of a process that runs code and holds no model: what a server (imports) or a training client
    (imports plus one SGD step on a tiny model: torch loads its optimizer and autograd machinery lazily, ~80 MB)
    costs whatever the model size.

    Children's peaks come from rusage (exact), which also counts the parent's peak at the time of the fork, so
    this process never imports torch or holds model-sized buffers; main() checks that it stayed small.
    """
    proc = subprocess.Popen([sys.executable, "-c", "from fedstream.common.allocator import tune_malloc\n"
                             "tune_malloc()\n" + code])
    return wait_peak(proc, 120).peak_rss


def synthetic_model_bytes(params: str) -> int:
    """Bytes of the synthetic task's model, computed in a child process (this one stays small: see base_rss)."""
    code = ("import sys, torch; from fedstream.common.tasks.synthetic import SyntheticMLP, parse_count; "
            "n = parse_count(sys.argv[1]); w = 4096 if n > 100_000_000 else (1024 if n >= 2_000_000 else 64); "
            "torch.set_default_device('meta'); m = SyntheticMLP(n, w); "
            "print(sum(t.numel() * t.element_size() for t in m.state_dict().values()))")
    return int(subprocess.run([sys.executable, "-c", code, params], capture_output=True, text=True,
                              check=True).stdout.strip())


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def warm(r: RunResult, warmup: int) -> RunResult:
    """The run without its first `warmup` rounds (both systems pay one-off start-up costs in round 1)."""
    if warmup <= 0 or len(r.round_seconds) <= warmup:
        return r
    skip = max(0, warmup - 1)  # wall and CPU entries measure rounds 2, 3, ...: entry i belongs to round i + 2
    return replace(r, round_seconds=r.round_seconds[warmup:], wall_seconds=r.wall_seconds[skip:],
                   cpu_per_round=r.cpu_per_round[skip:])


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


def ratio(r: RunResult, baseline: dict[int, RunResult]) -> str:
    """This row's median round seconds over the baseline revision's at the same client count."""
    base = baseline.get(r.clients)
    if base is None or not base.round_seconds or not r.round_seconds:
        return "n/a"
    return f"{median(r.round_seconds) / median(base.round_seconds):.2f}"


def row(r: RunResult, rounds: int, baseline: dict[int, RunResult] | None = None) -> str:
    sec, wall = median(r.round_seconds), median(r.wall_seconds)
    rate = r.model_bytes / sec / 1e6 if sec == sec and sec > 0 else float("nan")
    cpu = median([sum(c) for c in r.cpu_per_round]) if r.cpu_per_round else float("nan")
    client_peak = max(r.client_peaks) if r.client_peaks else 0
    return (f"| {r.system} | {r.clients} | {sec:.2f} | {wall:.2f} | {rate:,.0f} | {_mb(r.server_peak)} | "
            f"{_mb(client_peak)} | {_mb(r.wire_total / max(rounds, 1)) if r.wire_total >= 0 else 'n/a (no ss)'} | "
            f"{cpu:.2f} |".replace("nan |", "n/a |") + (f" {ratio(r, baseline)} |" if baseline is not None else ""))


def report(results: list[RunResult], floor: Floor | None, bases: tuple[int, int], model_bytes: int, rounds: int,
           beside: dict[int, Floor] | None = None, revision: Revision | None = None) -> str:
    """beside: the floor measured again right before each fedstream run (the machine's speed drifts);
    revision: the baseline, whose rows give the ratio column."""
    baseline = {r.clients: r for r in results if revision and r.system == revision.label} if revision else None
    head = ("| system | clients | round s (median) | wall s/round (median) | MB/s model data | server peak RSS | "
            "client peak RSS (max) | wire MB/round | CPU s/round |")
    rule = "|---|---|---|---|---|---|---|---|---|"
    if revision:
        head, rule = head + f" vs {revision.rev} (round s ratio) |", rule + "---|"
    lines = [head, rule] + [row(r, rounds, baseline) for r in results]
    out = ["\n".join(lines), ""]
    if revision:
        out.append(f"baseline {revision.label} = {revision.sha[:12]} ({revision.subject}), run from "
                   f"{revision.pythonpath.parent / 'src'} beside the working tree at each client count")
        for n, base in sorted(baseline.items()):
            current = next((r for r in results if r.system == "fedstream" and r.clients == n), None)
            if current is not None:
                change = median(current.round_seconds) / median(base.round_seconds) - 1
                out.append(f"fedstream vs {revision.label} at {n} clients: {100 * change:+.1f}% round time "
                           f"({median(current.round_seconds):.2f} s vs {median(base.round_seconds):.2f} s; "
                           f"{'within' if change <= 0.10 else 'OVER'} the 10% allowance)")
    if floor is not None:
        out.append(f"raw gRPC floor (bare grpcio, 2 processes, same bytes): {floor.row()}")
    by_system: dict[str, dict[int, RunResult]] = {}
    for r in results:
        by_system.setdefault(r.system, {})[r.clients] = r
    fed = by_system.get("fedstream", {})
    for peer in ("Flower 1.42", FLARE_LABEL):
        other = by_system.get(peer, {})
        for n in sorted(set(fed) & set(other)):
            a, b = fed[n], other[n]
            out.append(f"speed-up over {peer} at {n} clients: {median(b.round_seconds) / median(a.round_seconds):.1f}x "
                       f"per round (round seconds), {median(b.wall_seconds) / median(a.wall_seconds):.1f}x "
                       "(wall time per round)")
    if floor is not None:
        for n, r in sorted(fed.items()):
            rate = r.model_bytes / median(r.round_seconds) / 1e9
            line = (f"fedstream at {n} clients moves model data at {rate:.2f} GB/s = "
                    f"{100 * rate / floor.upload:.0f}% of the raw gRPC upload floor "
                    f"({100 * rate / floor.upload_transport:.0f}% of its transport-only rate)")
            if beside and n in beside:
                line += (f"; {100 * rate / beside[n].upload:.0f}% of the floor measured just before this run "
                         f"({beside[n].upload:.2f} GB/s)")
            out.append(line)
    server_budget, client_budget = (base + 3 * model_bytes for base in bases)
    out.append(f"memory budgets, base + 3 x model ({_mb(model_bytes)}): server {_mb(bases[0])} + {_mb(3 * model_bytes)} = "
               f"{_mb(server_budget)}; client {_mb(bases[1])} + {_mb(3 * model_bytes)} = {_mb(client_budget)} "
               "(server base: a process that imported fedstream's server, torch and grpc; client base: one that "
               "imported the client and took one SGD step on a tiny model)")
    for system, runs in by_system.items():
        s = slope([(n, r.server_peak) for n, r in runs.items()])
        worst_server = max(r.server_peak for r in runs.values())
        worst_client = max(max(r.client_peaks or [0]) for r in runs.values())
        text = f"{system}: server peak RSS slope {s / 1e6:+,.1f} MB per client" if s is not None else f"{system}:"
        text += (f"; worst server peak {_mb(worst_server)} "
                 f"({'within' if worst_server <= server_budget else 'OVER'} budget), worst client peak "
                 f"{_mb(worst_client)} ({'within' if worst_client <= client_budget else 'OVER'} budget)")
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
                        help="comma-separated subset of grpc (the floor), fedstream, flower, flare (NVIDIA FLARE 2.9)")
    parser.add_argument("--flare-clients", type=parse_clients, default=None,
                        help="client counts for FLARE (default: those of --clients up to 8)")
    parser.add_argument("--baseline", metavar="REV", default=None,
                        help="also run this git revision of fedstream (commit id, branch, HEAD~1) beside the working "
                             "tree at every client count, as fedstream@REV, with a ratio column")
    parser.add_argument("--workdir", type=Path, default=HERE / "out")
    parser.add_argument("--floor-reps", type=int, default=5)
    parser.add_argument("--client-device", default="cpu",
                        help="fedstream clients' --device (cuda: the GPU client path, download into pinned memory, "
                             "delta on the device)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="first rounds left out of the medians, for every system (default 1: the cold round)")
    args = parser.parse_args(argv)
    systems = {s.strip() for s in args.systems.split(",") if s.strip()}
    unknown = systems - set(SYSTEMS)
    if unknown:
        parser.error(f"--systems: unknown {sorted(unknown)}; choose from {', '.join(SYSTEMS)}")
    revision = None
    if args.baseline:
        try:
            revision = prepare_revision(args.baseline)
        except ValueError as exc:
            parser.error(str(exc))
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    workdir = args.workdir / f"round-bench-{stamp}"
    workdir.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/round_bench.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    header = [f"command: {command}", f"machine: {machine_summary()}", f"started: {stamp}"]
    print("\n".join(header), flush=True)

    model_bytes = synthetic_model_bytes(args.params)
    bases = (base_rss(SERVER_BASE), base_rss(CLIENT_BASE))
    results: list[RunResult] = []
    floor = None
    if "grpc" in systems:
        floor = measure_elsewhere(model_bytes, 1 << 20, args.floor_reps)
        print(f"floor: {floor.row()}", flush=True)
    beside: dict[int, Floor] = {}
    if "fedstream" in systems:
        for i, n in enumerate(args.clients):
            if floor is not None:
                beside[n] = measure_elsewhere(model_bytes, 1 << 20, args.floor_reps)
                print(f"floor before fedstream with {n} clients: {beside[n].row()}", flush=True)
            pair = [("fedstream", None)]
            if revision is not None:
                pair.append((revision.label, {"PYTHONPATH": str(revision.pythonpath)}))
                if i % 2 == 1:
                    pair.reverse()  # alternate who goes first, so a drifting machine favours neither
            for system, env in pair:
                started = time.monotonic()
                r = run_fedstream(workdir, n, args.params, args.rounds, client_device=args.client_device,
                                  system=system, env=env)
                results.append(r)
                print(f"{system} {n} clients done in {time.monotonic() - started:.0f} s: "
                      f"{row(warm(r, args.warmup), args.rounds)}; every round (s): {r.round_seconds}", flush=True)
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
            print(f"Flower {n} clients done in {time.monotonic() - started:.0f} s: "
                  f"{row(warm(r, args.warmup), args.rounds)}; every round (s): {r.round_seconds}", flush=True)
    if "flare" in systems:
        from flare_run import run_flare

        for n in args.flare_clients or [c for c in args.clients if c <= 8]:
            started = time.monotonic()
            try:
                r = run_flare(workdir, n, args.params, args.rounds)
            except RuntimeError as exc:
                print(f"FLARE with {n} clients failed: {exc}", flush=True)
                continue
            results.append(r)
            print(f"FLARE {n} clients done in {time.monotonic() - started:.0f} s: "
                  f"{row(warm(r, args.warmup), args.rounds)}; every round (s): {r.round_seconds}", flush=True)
    text = report([warm(r, args.warmup) for r in results], floor, bases, model_bytes, args.rounds, beside, revision)
    if args.warmup:
        text += f"\nmedians leave out the first {args.warmup} round(s) of every run (every round is in results.json)"
    own = vm_hwm(os.getpid())
    text += (f"\nthis benchmark process peaked at {_mb(own)}; every peak RSS above is larger, so none is an artefact of "
             "rusage counting the parent's peak" if all(own < p for r in results for p in [r.server_peak, *r.client_peaks])
             else f"\nWARNING: this benchmark process peaked at {_mb(own)}: smaller fedstream peaks above are not reliable")
    print("\n" + text)
    (workdir / "report.md").write_text("\n".join(header) + "\n\n" + text + "\n")
    (workdir / "results.json").write_text(json.dumps(
        {"command": command, "machine": machine_summary(), "model_bytes": model_bytes, "base_rss": bases,
         "floor": asdict(floor) if floor else None,
         "baseline": asdict(revision) | {"pythonpath": str(revision.pythonpath)} if revision else None, "floor_before_run": {n: asdict(f) for n, f in beside.items()},
         "runs": [asdict(r) for r in results]}, indent=1))
    print(f"\nraw results: {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
