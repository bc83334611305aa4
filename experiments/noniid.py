"""Experiment 1, non-IID data: digits split over 10 clients by Dirichlet(α = 0.1) label skew.

FedAvg vs FedProx vs FedAdam vs FedYogi, test accuracy per round, with the centralised baseline (same model,
all training data, the same number of epochs: rounds × local epochs) as the upper line. Runs in-process
(experiments/simulation.py: the real Coordinator and strategies, simulated clients training real models).

    python -m experiments.noniid            # writes experiments/results/noniid.{md,png,json}
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from experiments.report import markdown_table, plot_curves
from experiments.centralized import train_centrally
from experiments.simulation import SimClient, Simulation, split
from fedstream.common.training.partition import dirichlet_indices
from fedstream.common.tasks import load_task
from fedstream.server.aggregation.strategies import make_strategy

STRATEGIES = {
    "FedAvg": ("fedavg", {}),
    "FedProx (μ=0.1)": ("fedprox", {"mu": "0.1"}),
    "FedAdam": ("fedadam", {}),
    "FedYogi": ("fedyogi", {}),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--alpha", type=float, default=0.1)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--local-epochs", type=int, default=2)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="partition and model seeds")
    p.add_argument("--out", type=Path, default=Path("experiments/results"))
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    task = load_task("digits")
    curves: dict[str, list[list[float]]] = {name: [] for name in [*STRATEGIES, "Centralised"]}
    seconds: dict[str, float] = {}
    for seed in args.seeds:
        parts = split(task.train_data, dirichlet_indices(task.train_labels, args.clients, args.alpha, seed))
        clients = [SimClient(f"client-{i:02d}", i, data) for i, data in enumerate(parts)]
        for label, (name, options) in STRATEGIES.items():
            started = time.perf_counter()
            with tempfile.TemporaryDirectory() as tmp:
                records = Simulation(task, make_strategy(name, options), clients, Path(tmp), args.rounds, seed=seed,
                                     local_epochs=args.local_epochs).run()
            seconds[label] = seconds.get(label, 0.0) + time.perf_counter() - started
            curves[label].append([r["eval_accuracy"] for r in records])
            print(f"seed {seed} {label:18s} final {records[-1]['eval_accuracy']:.4f}", flush=True)
        central = train_centrally(load_task("digits"), args.rounds * args.local_epochs, seed=seed)
        curves["Centralised"].append(central[args.local_epochs - 1 :: args.local_epochs])
    rows = []
    for label, runs in curves.items():
        final = [run[-1] for run in runs]
        best = [max(run) for run in runs]
        reach = [next((i + 1 for i, a in enumerate(run) if a >= 0.9), None) for run in runs]
        rows.append([label, f"{sum(final) / len(final):.3f} ({min(final):.3f}–{max(final):.3f})",
                     f"{sum(best) / len(best):.3f}",
                     ", ".join("—" if r is None else str(r) for r in reach),
                     f"{seconds.get(label, 0.0) / len(args.seeds):.1f}" if label in seconds else "—"])
    header = ["method", f"final accuracy, mean (min–max) of {len(args.seeds)} seeds", "best accuracy",
              "first round ≥ 0.90 (per seed)", "seconds per run"]
    table = markdown_table(header, rows)
    command = "python -m experiments.noniid " + " ".join(
        [f"--clients {args.clients}", f"--alpha {args.alpha}", f"--rounds {args.rounds}",
         f"--local-epochs {args.local_epochs}", "--seeds " + " ".join(map(str, args.seeds))])
    (args.out / "noniid.md").write_text(f"{table}\n\nReproduce: `{command}`\n")
    (args.out / "noniid.json").write_text(json.dumps(curves))
    plot_curves(args.out / "noniid.png", curves,
                f"digits, Dirichlet α={args.alpha} over {args.clients} clients, {args.local_epochs} local epochs",
                "round (centralised: epochs / local epochs)")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
