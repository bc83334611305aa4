"""accuracy.png: both axis labels visible, the legend clear of them and of the curves, whole-number round ticks."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from fedstream.server.publication.accuracy_plot import accuracy_figure  # noqa: E402


def _records(rounds: int) -> list[dict]:
    return [{"round": r, "eval_accuracy": min(0.5 + 0.05 * r, 1.0), "eval_loss": 2.0 / r, "train_loss": 2.2 / r}
            for r in range(1, rounds + 1)]


@pytest.mark.parametrize("rounds", [1, 3, 10, 40])
def test_round_ticks_are_whole_numbers_and_labels_sit_clear_of_the_legend(rounds: int) -> None:
    fig = accuracy_figure(_records(rounds), "run")
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        ax, loss_ax = fig.axes
        lo, hi = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
        legend = fig.legends[0].get_window_extent(renderer)
        figure_box = fig.bbox
        for label in (ax.yaxis.label, loss_ax.yaxis.label, ax.xaxis.label):
            box = label.get_window_extent(renderer)
            assert label.get_text() and label.get_visible()
            assert figure_box.x0 <= box.x0 and box.x1 <= figure_box.x1, f"{label.get_text()} is cut off"
            assert not box.overlaps(legend), f"the legend covers the {label.get_text()!r} label"
        assert not ax.get_window_extent(renderer).overlaps(legend), "the legend covers the curves"
        assert [t.get_text() for t in fig.legends[0].get_texts()] == ["eval accuracy", "eval loss", "train loss"]
    finally:
        plt.close(fig)
