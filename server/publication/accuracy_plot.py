"""accuracy.png's figure: eval accuracy on the left axis, eval and train loss on the right, one tick per round.

`python -m fedstream.server.publication.accuracy_plot RUN_DIR` draws it from RUN_DIR/metrics.jsonl without
importing torch (the server runs it as a child at exit; a torch import would cost it seconds)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

if TYPE_CHECKING:
    from matplotlib.figure import Figure

ACCURACY_COLOR = "tab:blue"
LOSS_COLOR = "tab:red"


def accuracy_figure(records: Sequence[Mapping], title: str) -> "Figure":
    """The figure for evaluated round records; the legend sits under the axes, clear of both axis labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rounds = [r["round"] for r in records]
    fig, ax = plt.subplots(figsize=(7, 4.3))
    ax.plot(rounds, [r["eval_accuracy"] for r in records], "o-", color=ACCURACY_COLOR, label="eval accuracy")
    ax.set_xlabel("round")
    ax.set_ylabel("accuracy", color=ACCURACY_COLOR, fontsize=11)
    ax.tick_params(axis="y", colors=ACCURACY_COLOR)
    ax.set_ylim(0, 1)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if len(rounds) == 1:
        ax.set_xlim(rounds[0] - 1, rounds[0] + 1)
    loss_ax = ax.twinx()
    loss_ax.plot(rounds, [r["eval_loss"] for r in records], "s--", color=LOSS_COLOR, label="eval loss")
    train = [(r["round"], r["train_loss"]) for r in records if r.get("train_loss") is not None]
    if train:
        loss_ax.plot(*zip(*train), "^:", color="tab:orange", label="train loss")
    loss_ax.set_ylabel("loss", color=LOSS_COLOR, fontsize=11)
    loss_ax.tick_params(axis="y", colors=LOSS_COLOR)
    loss_ax.set_ylim(bottom=0)
    handles = ax.get_legend_handles_labels()[0] + loss_ax.get_legend_handles_labels()[0]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False)
    ax.set_title(title)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


def write_accuracy_png(records: Sequence[Mapping], title: str, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig = accuracy_figure(records, title)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_run(run_dir: Path) -> Path | None:
    """RUN_DIR/accuracy.png from RUN_DIR/metrics.jsonl's evaluated rounds (None when there are none)."""
    metrics = run_dir / "metrics.jsonl"
    lines = metrics.read_text().splitlines() if metrics.exists() else []
    records = [r for r in (json.loads(line) for line in lines if line.strip()) if r.get("eval_accuracy") is not None]
    if not records:
        return None
    return write_accuracy_png(records, f"fedstream run {run_dir.name}", run_dir / "accuracy.png")


if __name__ == "__main__":
    plot_run(Path(sys.argv[1]))
