"""Experiment 2, Byzantine clients: digits over 10 IID clients, 2 of them malicious.

Attacks (the two malicious clients train honestly, then transform their delta before upload):
  - sign-flip ×10: both send −10 × their update (sign-flipped and 10×-scaled);
  - mixed: one sends −1 × its update (sign flip), the other 10 × its update (scaling).
FedAvg vs median vs trimmed mean (β = 0.2) vs Krum and multi-Krum (f = 2), each also without attack, against
clean FedAvg.
Runs in-process (experiments/simulation.py: real Coordinator, strategies and spool; simulated clients).

    python -m experiments.byzantine         # writes experiments/results/byzantine.{md,png,json}
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

from experiments.report import markdown_table, plot_curves
from experiments.simulation import SimClient, Simulation, scale, sign_flip, split
from fedstream.common.training.partition import iid_indices
from fedstream.common.tasks import load_task
from fedstream.server.aggregation.strategies import make_strategy

STRATEGIES = {
    "FedAvg": ("fedavg", {}),
    "median": ("median", {}),
    "trimmed mean (β=0.2)": ("trimmed-mean", {"beta": "0.2"}),
    "Krum (f=2)": ("krum", {"f": "2"}),
    "multi-Krum (f=2)": ("multi-krum", {"f": "2"}),
}
SCENARIOS = {
    "no attack": [None, None],
    "sign-flip ×10": [scale(-10.0), scale(-10.0)],
    "mixed: sign-flip / ×10": [sign_flip, scale(10.0)],
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--malicious", type=int, default=2)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--local-epochs", type=int, default=2)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", type=Path, default=Path("experiments/results"))
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    task = load_task("digits")
    final: dict[tuple[str, str], list[float]] = {}
    curves: dict[str, list[list[float]]] = {}
    notes: list[str] = []
    for seed in args.seeds:
        parts = split(task.train_data, iid_indices(len(task.train_labels), args.clients, seed))
        for scenario, attacks in SCENARIOS.items():
            honest = args.clients - args.malicious
            clients = [SimClient(f"client-{i:02d}", i, data,
                                 attacks[(i - honest) % len(attacks)] if i >= honest else None)
                       for i, data in enumerate(parts)]
            for label, (name, options) in STRATEGIES.items():
                with tempfile.TemporaryDirectory() as tmp:
                    sim = Simulation(task, make_strategy(name, options), clients, Path(tmp), args.rounds, seed=seed,
                                     local_epochs=args.local_epochs)
                    records = sim.run()
                accuracy = [r["eval_accuracy"] for r in records]
                if len(accuracy) < args.rounds:
                    notes.append(f"seed {seed}, {label}, {scenario}: stopped after round {len(accuracy)} "
                                 f"({sim.stopped}); counted as accuracy 0.1 (chance) from then on")
                    accuracy += [0.1] * (args.rounds - len(accuracy))
                final.setdefault((label, scenario), []).append(accuracy[-1])
                curves.setdefault(f"{label}, {scenario}", []).append(accuracy)
                print(f"seed {seed} {scenario:24s} {label:22s} final {accuracy[-1]:.4f}", flush=True)
    clean = final[("FedAvg", "no attack")]
    reference = sum(clean) / len(clean)
    attacked = [s for s in SCENARIOS if s != "no attack"]
    rows = []
    for label in STRATEGIES:
        cells = []
        for scenario in SCENARIOS:
            values = final.get((label, scenario))
            cells.append("—" if values is None else f"{sum(values) / len(values):.3f} ({min(values):.3f}–{max(values):.3f})")
        worst = min(sum(final[(label, s)]) / len(final[(label, s)]) for s in attacked)
        gap = (reference - worst) * 100
        rows.append([label, *cells, f"{gap:.1f}", "yes" if gap <= 3.0 else "no"])
    header = ["strategy", *[f"{s}: final accuracy" for s in SCENARIOS], "worst attacked: points below clean FedAvg",
              "within 3 points"]
    table = markdown_table(header, rows)
    command = ("python -m experiments.byzantine " + f"--clients {args.clients} --malicious {args.malicious} "
               f"--rounds {args.rounds} --local-epochs {args.local_epochs} --seeds " + " ".join(map(str, args.seeds)))
    text = f"{table}\n\nMean (min–max) over seeds {args.seeds}. Reproduce: `{command}`\n"
    if notes:
        text += "\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    (args.out / "byzantine.md").write_text(text)
    (args.out / "byzantine.json").write_text(json.dumps({"final": {f"{k[0]} | {k[1]}": v for k, v in final.items()},
                                                          "curves": curves}))
    shown = {k: v for k, v in curves.items() if k.endswith("sign-flip ×10") or k == "FedAvg, no attack"}
    plot_curves(args.out / "byzantine.png", shown,
                f"digits, {args.clients} IID clients, {args.malicious} sending −10× their update")
    print(text)
    return 0 if all(math.isfinite(v) for vs in final.values() for v in vs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
