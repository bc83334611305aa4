"""Markdown tables from the JSON lines of llm_federated.py (perplexity after the last round, bias per round).

    python benchmarks/llm_table.py results.jsonl
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict

LABELS = {"initial": "initial model (no training)", "plain": "federated LoRA, plain averaging",
          "ffa": "federated FFA-LoRA (A frozen)", "full": "federated full fine-tuning",
          "central": "centralised LoRA (union of the data)"}


def main(path: str) -> None:
    runs: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for line in open(path):
        record = json.loads(line)
        runs[(record["mode"], record["seed"])].append(record)
    start = [r[0]["eval_perplexity"] for r in runs.values()]
    finals: dict[str, list[float]] = defaultdict(list)
    personal: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for (mode, _), records in sorted(runs.items()):
        finals[mode].append(records[-1]["eval_perplexity"])
        if "personal_eval_perplexity" in records[-1]:
            personal[mode].append((records[-1]["personal_global_eval_perplexity"], records[-1]["personal_eval_perplexity"]))
    rounds = max(len(r) - 1 for r in runs.values())
    print(f"| model | held-out perplexity after {rounds} rounds (per seed) | mean |\n|---|---|---|")
    print(f"| {LABELS['initial']} | {start[0]:.2f} | {start[0]:.2f} |")
    for mode in ("plain", "ffa", "full", "central"):
        if finals[mode]:
            print(f"| {LABELS[mode]} | {', '.join(f'{v:.2f}' for v in finals[mode])} | {statistics.mean(finals[mode]):.2f} |")
    print("\n| model | clients' own held-out text: global model | after local training (personalised) |\n|---|---|---|")
    for mode in ("plain", "ffa", "full"):
        if personal[mode]:
            g = statistics.mean(p[0] for p in personal[mode])
            loc = statistics.mean(p[1] for p in personal[mode])
            print(f"| {LABELS[mode]} | {g:.2f} | {loc:.2f} |")
    print("\n| round | ‖mean(BA) − mean(B)·mean(A)‖, plain (relative) | FFA-LoRA |\n|---|---|---|")
    for rnd in range(1, rounds + 1):
        cells = []
        for mode in ("plain", "ffa"):
            values = [r[rnd] for (m, _), r in runs.items() if m == mode and len(r) > rnd]
            cells.append(f"{statistics.mean(v['bias'] for v in values):.2e} ({statistics.mean(v['bias_relative'] for v in values):.2%})"
                         if values else "-")
        print(f"| {rnd} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main(sys.argv[1])
