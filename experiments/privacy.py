"""Experiment 3, privacy vs utility: central DP-FedAvg on digits at ε ∈ {1, 3, 8}, δ = 1e-5, vs no DP.

Client-level DP needs many clients per round (the noise on the mean is σ·C/K), and digits has only 1,438
training images, so the population is 1,438 clients holding one image each (client-level DP is then also
example-level DP). Two baselines: FedAvgM without DP, and the same DP pipeline with σ = 0 (clipping and
uniform weights only), so the cost of the noise alone is visible. Each round samples K clients (q = K/1438); a client takes one local SGD step; the server
clips each delta to C, adds N(0, σ²C²) to the sum and applies FedAvgM (server momentum, as in McMahan et al.
2018). σ is calibrated with Opacus (`get_noise_multiplier`) so that the planned rounds end at the target ε,
and the ε in the table is what the run's own accountant reported after its last round. The model is the
digits MLP with 32 hidden units (3,466 parameters): fewer parameters, less total noise.
Runs in-process (experiments/simulation.py: the real Coordinator, CentralDP strategy and upload spool).

    python -m experiments.privacy           # writes experiments/results/privacy.{md,png,json}
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

import torch

from experiments.report import markdown_table, plot_curves
from experiments.simulation import SimClient, Simulation, split
from fedstream.common.tasks import load_task
from fedstream.server.aggregation.privacy import make_dp_strategy
from fedstream.server.aggregation.strategies import make_strategy

NO_DP = "no DP (FedAvgM, no clipping)"
CLIP_ONLY = "clipping only (σ = 0)"


def noise_for(epsilon: float, delta: float, sample_rate: float, rounds: int) -> float:
    from opacus.accountants.utils import get_noise_multiplier

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(get_noise_multiplier(target_epsilon=epsilon, target_delta=delta, sample_rate=sample_rate,
                                          steps=rounds, accountant="rdp"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 3.0, 8.0])
    p.add_argument("--delta", type=float, default=1e-5)
    p.add_argument("--clients-per-round", type=int, nargs="+", default=[50, 150, 450])
    p.add_argument("--rounds", type=int, default=60)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--local-lr", type=float, default=0.5)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--useful", type=float, default=0.8, help="accuracy that counts as useful in the K column")
    p.add_argument("--out", type=Path, default=Path("experiments/results"))
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    task = load_task("digits", {"hidden": str(args.hidden)})
    population = len(task.train_labels)
    clients = [SimClient(f"client-{i:04d}", i, data)
               for i, data in enumerate(split(task.train_data, [torch.tensor([i]) for i in range(population)]))]
    results: dict[str, dict] = {}
    curves: dict[str, list[list[float]]] = {}
    for k in args.clients_per_round:
        q = k / population
        for label, epsilon in [(NO_DP, None), (CLIP_ONLY, None), *((f"ε={e:g}", e) for e in args.epsilons)]:
            inner = make_strategy("fedavgm", {"momentum": "0.9", "server_lr": "1.0"})
            sigma = None
            if label == NO_DP:
                strategy = inner
            elif label == CLIP_ONLY:
                strategy = make_dp_strategy(inner, "central", str(args.clip), 0.0, args.delta)
            else:
                sigma = noise_for(epsilon, args.delta, q, args.rounds)
                strategy = make_dp_strategy(inner, "central", str(args.clip), sigma, args.delta, epsilon,
                                            {"noise_seed": str(args.seed)})
            started = time.perf_counter()
            with tempfile.TemporaryDirectory() as tmp:
                records = Simulation(task, strategy, clients, Path(tmp), args.rounds, clients_per_round=k,
                                     seed=args.seed, local_epochs=1, learning_rate=args.local_lr).run()
            results[f"{label} | K={k}"] = {
                "accuracy": records[-1]["eval_accuracy"], "rounds": len(records), "sigma": sigma,
                "epsilon": records[-1].get("epsilon"), "seconds": time.perf_counter() - started,
                "clipped_fraction": records[-1].get("clipped_fraction")}
            curves[f"{label}, K={k}"] = [[r["eval_accuracy"] for r in records]]
            print(f"K={k:4d} {label:7s} σ={sigma or 0:.3f} rounds={len(records)} "
                  f"acc={records[-1]['eval_accuracy']:.4f} ε={records[-1].get('epsilon')}", flush=True)
    rows = []
    for label in [NO_DP, CLIP_ONLY, *[f"ε={e:g}" for e in args.epsilons]]:
        cells = []
        for k in args.clients_per_round:
            r = results[f"{label} | K={k}"]
            if r["sigma"] is None:
                cells.append(f"{r['accuracy']:.3f}")
            else:
                cells.append(f"{r['accuracy']:.3f} (σ={r['sigma']:.2f}, ε={r['epsilon']:.2f})")
        enough = [k for k in args.clients_per_round if results[f"{label} | K={k}"]["accuracy"] >= args.useful]
        rows.append([label, *cells, str(min(enough)) if enough else f"> {max(args.clients_per_round)}"])
    header = ["target", *[f"K={k} (q={k / population:.3f}): accuracy (σ, accountant ε)" for k in args.clients_per_round],
              f"smallest K reaching {args.useful:g}"]
    table = markdown_table(header, rows)
    command = ("python -m experiments.privacy --epsilons " + " ".join(f"{e:g}" for e in args.epsilons)
               + f" --delta {args.delta:g} --clients-per-round " + " ".join(map(str, args.clients_per_round))
               + f" --rounds {args.rounds} --clip {args.clip:g} --local-lr {args.local_lr:g} --hidden {args.hidden}"
               + f" --seed {args.seed}")
    text = (f"{table}\n\n{population} clients with one digits image each, {args.rounds} rounds, clip C={args.clip:g}, "
            f"δ={args.delta:g}, FedAvgM server (momentum 0.9). Reproduce: `{command}`\n")
    (args.out / "privacy.md").write_text(text)
    (args.out / "privacy.json").write_text(json.dumps({"results": results, "curves": curves}))
    largest = max(args.clients_per_round)
    plot_curves(args.out / "privacy.png", {k: v for k, v in curves.items() if k.endswith(f"K={largest}")},
                f"central DP-FedAvg on digits, K={largest} of {population} clients per round, δ={args.delta:g}")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
