"""Held-out perplexity of federated LoRA (plain averaging and FFA-LoRA), federated full fine-tuning and centralised
LoRA on the tiny CI model and the stdlib split, plus the bias of averaging LoRA factors separately.

FedAvg runs in this process through the same Task calls a client makes (client_split, train, federated_state,
load_federated_state), so each client's adapters are at hand: the streaming server never holds individual
updates, and the bias ‖mean(B·A) − mean(B)·mean(A)‖ needs them. One JSON line per round on stdout.

    python benchmarks/llm_federated.py --mode plain --seed 0      # also: ffa, full, central, initial
"""

from __future__ import annotations

import argparse
import json
import time
from collections import OrderedDict

import torch

from fedstream.common.tasks import load_task

MODES = {"plain": {}, "ffa": {"lora_variant": "ffa"}, "full": {"lora_r": "0"}, "central": {}, "initial": {}}


def lora_pairs(state: dict[str, torch.Tensor]) -> list[tuple[str, str]]:
    return [(n, n.replace(".lora_A.", ".lora_B.")) for n in state if ".lora_A." in n]


def averaging_bias(clients: list[dict[str, torch.Tensor]], weights: list[float], frozen: dict[str, torch.Tensor]) -> dict:
    """Σ over adapted layers of ‖mean(BᵢAᵢ) − mean(Bᵢ)·mean(Aᵢ)‖_F, absolute and relative to ‖mean(BᵢAᵢ)‖_F."""
    total = sum(weights)
    gap2 = size2 = 0.0
    for a_name, b_name in lora_pairs({**frozen, **clients[0]}):
        a = [c.get(a_name, frozen.get(a_name)) for c in clients]
        b = [c[b_name] for c in clients]
        mean_product = sum(w * bi @ ai for w, ai, bi in zip(weights, a, b)) / total
        product_of_means = (sum(w * bi for w, bi in zip(weights, b)) / total) @ (sum(w * ai for w, ai in zip(weights, a)) / total)
        gap2 += float((mean_product - product_of_means).pow(2).sum())
        size2 += float(mean_product.pow(2).sum())
    return {"bias": gap2 ** 0.5, "bias_relative": (gap2 / size2) ** 0.5 if size2 else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=list(MODES), default="plain")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=8, help="local steps per client per round")
    parser.add_argument("--task-option", action="append", default=[], help="K=V, passed to hf-causal-lm")
    args = parser.parse_args()
    torch.set_num_threads(1)
    options = {"lora_seed": str(args.seed), "steps": str(args.steps), **MODES[args.mode],
               **dict(o.split("=", 1) for o in args.task_option)}
    task = load_task("hf-causal-lm", options)
    cpu = torch.device("cpu")
    model = task.make_model()
    global_state = OrderedDict((n, v.clone()) for n, v in task.federated_state(model).items())
    frozen = {n: v.clone() for n, v in model.state_dict().items() if n not in global_state}
    scores = task.evaluate(model, task.test_data, cpu)
    print(json.dumps({"mode": args.mode, "seed": args.seed, "round": 0, "eval_perplexity": scores["perplexity"]}), flush=True)
    if args.mode == "initial":
        return
    parts = 1 if args.mode == "central" else args.clients
    splits = [task.client_split(i, parts) for i in range(parts)]
    settings = task.defaults
    if args.mode == "central":  # the union of the clients' data, as many optimiser steps as all of them together
        settings = type(settings)(**{**settings.__dict__, "max_steps": args.steps * args.clients})
    for rnd in range(1, args.rounds + 1):
        started = time.perf_counter()
        states, weights, personal = [], [], []
        for i, split in enumerate(splits):
            task.load_federated_state(model, global_state)
            before = task.evaluate(model, split.personal_test, cpu)["perplexity"]
            generator = torch.Generator().manual_seed(args.seed * 7919 + rnd * 101 + i)
            torch.manual_seed(args.seed * 7919 + rnd * 101 + i)
            task.train(model, split.train, settings, cpu, generator)
            after = task.evaluate(model, split.personal_test, cpu)["perplexity"]
            states.append({n: v.clone() for n, v in task.federated_state(model).items()})
            weights.append(float(len(split.train)))
            personal.append((before, after, len(split.personal_test)))
        total = sum(weights)
        global_state = OrderedDict((n, sum(w * s[n] for w, s in zip(weights, states)) / total) for n in global_state)
        record = {"mode": args.mode, "seed": args.seed, "round": rnd}
        if args.mode in ("plain", "ffa") and parts > 1:
            record.update(averaging_bias(states, weights, frozen))
        task.load_federated_state(model, global_state)
        record["eval_perplexity"] = task.evaluate(model, task.test_data, cpu)["perplexity"]
        n = sum(p[2] for p in personal)
        record["personal_global_eval_perplexity"] = sum(p[0] * p[2] for p in personal) / n
        record["personal_eval_perplexity"] = sum(p[1] * p[2] for p in personal) / n
        record["seconds"] = round(time.perf_counter() - started, 2)
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
