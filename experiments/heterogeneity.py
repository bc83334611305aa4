"""Synchronous vs deadline vs asynchronous training when 3 of 10 clients are 5× slower: time to 0.90 accuracy.

Real processes: one `fedstream server` and 10 `fedstream client` processes on 127.0.0.1 (digits split IID ten
ways; clients 7, 8 and 9 run with --slowdown 5). Digits trains in milliseconds, so every training step is paced
to --step-ms (experiments/paced_task.py) and device speed, not the noise of a shared machine, sets the pace.
The clock starts when the tenth client has joined (every configuration waits for all ten before its first
round or task) and each run lasts --window seconds. Writes docs/heterogeneity.md and docs/heterogeneity.png:

    python experiments/heterogeneity.py --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from experiments.report import markdown_table  # noqa: E402

CLIENTS = 10
SLOW = (7, 8, 9)
SLOWDOWN = 5
JOINED = re.compile(r"^(\S+ \S+) INFO fedstream.server client=(\S+) joined")


@dataclass
class Mode:
    label: str
    flags: list[str]
    color: str


def modes(deadline: float, buffer_size: int) -> list[Mode]:
    slow_epochs = [f for i in SLOW for f in ("--client-setting", f"client-{i}:local_epochs=1")]
    return [
        Mode("sync (wait for all 10)", ["--min-clients", str(CLIENTS)], "tab:blue"),
        Mode(f"sync, {deadline:g} s deadline, ≥7 updates",
             ["--clients-per-round", str(CLIENTS), "--min-clients", "7", "--round-timeout", f"{deadline:g}"],
             "tab:orange"),
        Mode("sync, slow clients 1 local epoch", ["--min-clients", str(CLIENTS), *slow_epochs], "tab:purple"),
        Mode(f"async FedBuff K={buffer_size}, 1/√(1+s)",
             ["--mode", "async", "--min-clients", str(CLIENTS), "--buffer-size", str(buffer_size),
              "--staleness", "sqrt", "--max-staleness", "20"], "tab:green"),
    ]


@dataclass
class Run:
    mode: str
    seed: int
    points: list[tuple[float, dict]] = field(default_factory=list)
    load: tuple[float, float] = (0.0, 0.0)

    def first_reaching(self, target: float) -> tuple[float, dict, int] | None:
        """(seconds, record, updates folded so far) when eval accuracy first reached target."""
        updates = 0
        for seconds, record in self.points:
            updates += record["clients"]
            if record["eval_accuracy"] >= target:
                return seconds, record, updates
        return None


def _python_env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def run_once(mode: Mode, seed: int, work: Path, step_ms: float, window: float) -> Run:
    """One federation: server + 10 clients for `window` seconds after the last join; returns its accuracy curve."""
    run_dir = work / f"{re.sub(r'[^a-z0-9]+', '-', mode.label.lower()).strip('-')}-seed{seed}"
    run_dir.mkdir(parents=True)
    port_file, server_log = run_dir / "port", run_dir / "server.log"
    cli = [sys.executable, "-m", "fedstream.cli"]
    task = ["--task", "experiments.paced_task:make_task", "--task-option", f"step_ms={step_ms:g}"]
    load_before = os.getloadavg()[0]
    with open(server_log, "w") as log:
        server = subprocess.Popen(cli + ["server", "--insecure", "--address", "127.0.0.1:0",
                                         "--port-file", str(port_file), "--run-dir", str(run_dir / "run"),
                                         "--rounds", "100000", "--seed", str(seed), *task, *mode.flags],
                                  stdout=log, stderr=subprocess.STDOUT, env=_python_env(), cwd=ROOT)
    clients: list[subprocess.Popen] = []
    try:
        deadline = time.monotonic() + 120
        while not (port_file.exists() and port_file.read_text().strip()):
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {server_log.read_text()[-2000:]}")
            time.sleep(0.05)
        address = f"127.0.0.1:{port_file.read_text().strip()}"
        for i in range(CLIENTS):
            slow = ["--slowdown", str(SLOWDOWN)] if i in SLOW else []
            with open(run_dir / f"client-{i}.log", "w") as log:
                clients.append(subprocess.Popen(cli + ["client", "--insecure", "--server", address, "--device", "cpu",
                                                       "--partition", f"{i}/{CLIENTS}", "--connect-timeout", "120",
                                                       *task, *slow], stdout=log, stderr=subprocess.STDOUT,
                                                env=_python_env(), cwd=ROOT))
        t0 = _all_joined(server_log, deadline=time.monotonic() + 180)
        run = Run(mode.label, seed)
        metrics = run_dir / "run" / "metrics.jsonl"
        seen = 0
        while time.time() - t0 < window:
            lines = metrics.read_text().splitlines() if metrics.exists() else []
            for line in lines[seen:]:
                run.points.append((time.time() - t0, json.loads(line)))
            seen = len(lines)
            time.sleep(0.05)
        run.load = (load_before, os.getloadavg()[0])
        return run
    finally:
        _stop(server, clients)


def _stop(server: subprocess.Popen, clients: list[subprocess.Popen]) -> None:
    """SIGTERM to the server (it tells polling clients to finish); clients still busy after a grace period are
    terminated, since a client whose server is gone keeps retrying."""
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
    deadline = time.monotonic() + 5
    for p in clients:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.terminate()
    for p in clients:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _all_joined(server_log: Path, deadline: float) -> float:
    """Wall-clock time (from the server's log) at which the tenth distinct client joined."""
    while time.monotonic() < deadline:
        joined: dict[str, float] = {}
        for line in server_log.read_text().splitlines():
            match = JOINED.match(line)
            if match and match.group(2) not in joined:
                joined[match.group(2)] = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        if len(joined) >= CLIENTS:
            return sorted(joined.values())[CLIENTS - 1]
        time.sleep(0.05)
    raise RuntimeError(f"not all {CLIENTS} clients joined; server log: {server_log.read_text()[-2000:]}")


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _fmt(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def summarize(runs: list[Run], labels: list[str], target: float, window: float) -> tuple[list[list[str]], dict]:
    rows, facts = [], {}
    for label in labels:
        mine = [r for r in runs if r.mode == label]
        reached = [r.first_reaching(target) for r in mine]
        times = [hit[0] for hit in reached if hit]
        rounds = [hit[1]["round"] for hit in reached if hit]
        updates = [hit[2] for hit in reached if hit]
        final = [r.points[-1][1]["eval_accuracy"] for r in mine if r.points]
        per_round = [rec["seconds"] for r in mine for _, rec in r.points]
        staleness = [rec["staleness_mean"] for r in mine for _, rec in r.points if "staleness_mean" in rec]
        rounds_in_window = [len(r.points) for r in mine]
        facts[label] = _median(times)
        spread = f" ({min(times):.1f}–{max(times):.1f})" if len(times) > 1 else ""
        rows.append([label, f"{len(times)}/{len(mine)}", _fmt(_median(times)) + spread, _fmt(_median(rounds), 0),
                     _fmt(_median(updates), 0), _fmt(_median(per_round), 2), _fmt(_median(rounds_in_window), 0),
                     _fmt(_median(final), 3), _fmt(statistics.mean(staleness), 2) if staleness else "—"])
    return rows, facts


def plot(runs: list[Run], all_modes: list[Mode], target: float, window: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.6))
    colors = {m.label: m.color for m in all_modes}
    labelled = set()
    for run in runs:
        xs = [0.0] + [s for s, _ in run.points]
        ys = [0.0] + [r["eval_accuracy"] for _, r in run.points]
        label = None if run.mode in labelled else run.mode
        labelled.add(run.mode)
        ax.step(xs, ys, where="post", color=colors[run.mode], alpha=0.8, linewidth=1.3, label=label)
    ax.axhline(target, color="grey", linestyle="--", linewidth=1)
    ax.set_xlim(0, window)
    ax.set_ylim(0, 1)
    ax.set_xlabel("seconds since the tenth client joined")
    ax.set_ylabel("test accuracy of the global model")
    ax.set_title(f"digits, {CLIENTS} clients, {len(SLOW)} of them {SLOWDOWN}× slower (one line per run)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(path: Path, command: str, rows: list[list[str]], runs: list[Run], facts: dict, args, labels,
                 minutes: float) -> None:
    header = ["configuration", f"runs reaching {args.target}", f"seconds to {args.target} (median, range)",
              "rounds/versions to it", "updates folded to it", "median s per round/version",
              f"rounds/versions in {args.window:g} s", f"accuracy at {args.window:g} s", "mean staleness"]
    sync = facts.get(labels[0])
    lines = []
    for label, value in facts.items():
        if value is None:
            lines.append(f"- {label}: did not reach {args.target} within {args.window:g} s (median run)")
            continue
        faster = f", {sync / value:.1f}× sooner than waiting for all" if sync and label != labels[0] else ""
        lines.append(f"- {label}: {value:.1f} s to {args.target} (median){faster}")
    loads = ", ".join(f"{r.load[0]:.1f}→{r.load[1]:.1f}" for r in runs)
    text = f"""# Heterogeneous clients: synchronous, deadline and asynchronous training

{CLIENTS} clients train the digits MLP (IID split); clients {", ".join(map(str, SLOW))} run with
`--slowdown {SLOWDOWN}`. Every training step is paced to {args.step_ms:g} ms (`experiments/paced_task.py`): a fast
client's local training (3 epochs over ~144 examples, 15 steps) takes about {15 * args.step_ms / 1000:.1f} s and a
slow one about {15 * args.step_ms * SLOWDOWN / 1000:.1f} s. Each configuration ran {args.repeats} time(s)
(seeds 0..{args.repeats - 1}) for {args.window:g} s after the tenth client joined; real server and client processes
over gRPC on 127.0.0.1.

Command (writes this file, `heterogeneity.png` and the raw curves in `heterogeneity.json`; it took
{minutes:.0f} minutes here, mostly starting and stopping processes):

    {command}

{markdown_table(header, rows)}

{chr(10).join(lines)}

![accuracy against wall-clock time](heterogeneity.png)

What the configurations do:
- **sync**: every round waits for all ten clients, so each round lasts as long as the slowest client.
- **sync with a deadline** (`--clients-per-round 10 --min-clients 7 --round-timeout T`): a round closes at the
  deadline with whatever arrived (at least 7); the slow clients never make it and their data is never learned from.
- **sync, slow clients 1 local epoch** (`--client-setting client-7:local_epochs=1`, ...): the server gives the slow
  clients less work, so they finish with the others; they still contribute, with smaller steps.
- **async (FedBuff)** (`--mode async --buffer-size K --staleness sqrt`): no rounds; an idle client always gets a task
  on the newest version, and every K folded updates make a new version. Slow clients' updates arrive several versions
  late and are scaled by 1/√(1+s): fast progress, but versions mix updates of different ages (mean staleness above).

Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; shared with other jobs,
1-minute load average before→after each run: {loads}. Seconds are wall-clock and include evaluation after every
round.
"""
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--window", type=float, default=40.0, help="seconds each run lasts after the last join")
    parser.add_argument("--step-ms", type=float, default=60.0, help="pace of one training step")
    parser.add_argument("--deadline", type=float, default=2.5, help="round timeout of the deadline configuration")
    parser.add_argument("--buffer-size", type=int, default=5, help="K of the async configuration")
    parser.add_argument("--target", type=float, default=0.90)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "heterogeneity.md")
    parser.add_argument("--work", type=Path, default=None, help="keep run directories here (default: a temp dir)")
    args = parser.parse_args(argv)
    all_modes = modes(args.deadline, args.buffer_size)
    work = args.work or Path(tempfile.mkdtemp(prefix="fedstream-heterogeneity-"))
    started = time.monotonic()
    runs = []
    for seed in range(args.repeats):
        for mode in all_modes:
            run = run_once(mode, seed, work, args.step_ms, args.window)
            hit = run.first_reaching(args.target)
            final = run.points[-1][1]["eval_accuracy"] if run.points else float("nan")
            reached = f"{hit[0]:.1f} s to {args.target:.2f}" if hit else "target not reached"
            print(f"{mode.label:45s} seed {seed}: {len(run.points):3d} rounds/versions, {reached}, "
                  f"final accuracy {final:.3f}", flush=True)
            runs.append(run)
    labels = [m.label for m in all_modes]
    rows, facts = summarize(runs, labels, args.target, args.window)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    plot(runs, all_modes, args.target, args.window, args.out.with_suffix(".png"))
    command = "python experiments/heterogeneity.py " + " ".join(argv if argv is not None else sys.argv[1:])
    write_report(args.out, command.strip(), rows, runs, facts, args, labels, (time.monotonic() - started) / 60)
    curves = [{"mode": r.mode, "seed": r.seed, "load": r.load,
               "points": [[s, {k: v for k, v in rec.items() if k != "folded"}] for s, rec in r.points]} for r in runs]
    args.out.with_suffix(".json").write_text(json.dumps(curves))
    print(markdown_table(["configuration", "reached", "seconds", "rounds", "updates", "s/round", "rounds in window",
                          "final acc", "staleness"], rows))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
