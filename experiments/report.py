"""Shared output for the experiments: a markdown table and an accuracy-per-round plot."""

from __future__ import annotations

from pathlib import Path


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def plot_curves(path: Path, curves: dict[str, list[list[float]]], title: str, xlabel: str = "round") -> None:
    """Mean accuracy per round of each method, with the min–max band over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for label, runs in curves.items():
        if not runs:
            continue
        length = min(len(r) for r in runs)
        rounds = list(range(1, length + 1))
        columns = [[r[i] for r in runs] for i in range(length)]
        mean = [sum(c) / len(c) for c in columns]
        style = "k--" if label.lower().startswith("central") else "-"
        ax.plot(rounds, mean, style, label=label)
        if len(runs) > 1:
            ax.fill_between(rounds, [min(c) for c in columns], [max(c) for c in columns], alpha=0.15)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
