"""Terminal progress for the round loop: a rich bar on a terminal, one plain line per round otherwise."""

from __future__ import annotations

import shutil
import sys
import time
from typing import Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class RoundProgress:
    def __init__(self, total_rounds: int, done: int = 0, console: Console | None = None) -> None:
        self.console = console or Console(file=sys.stdout)
        self.total = total_rounds
        self.started = time.monotonic()
        self.live = self.console.is_terminal
        self.progress = Progress(TextColumn("[bold]round"), MofNCompleteColumn(), BarColumn(),
                                 TextColumn("{task.fields[status]}"), TimeElapsedColumn(), console=self.console,
                                 disable=not self.live)
        self.task_id = self.progress.add_task("rounds", total=total_rounds, completed=done, status="waiting for clients")

    def __enter__(self) -> "RoundProgress":
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def status(self, text: str) -> None:
        self.progress.update(self.task_id, status=text)

    def round_done(self, record: dict) -> None:
        evaluated = record.get("eval_accuracy") is not None
        width = shutil.get_terminal_size().columns if self.live else None
        self.progress.update(self.task_id, completed=record["round"],
                             status=f"acc {record['eval_accuracy']:.4f}" if evaluated else "acc -")
        self.console.print(round_line(record, self.total, width), highlight=False, soft_wrap=True)

    def callback(self) -> Callable[[dict], None]:
        return self.round_done


def round_line(record: dict, total: int, width: int | None = None) -> str:
    """One round's summary; given a width, the least telling fields go first until it fits, so it never wraps."""
    evaluated = record.get("eval_accuracy") is not None
    fields = [(0, f"round {record['round']}/{total}"), (4, f"clients {record['clients']}/{record['selected']}"),
              (0, f"acc {record['eval_accuracy']:.4f}" if evaluated else "acc -")]
    if evaluated:
        fields.append((3, f"loss {record['eval_loss']:.4f}"))
    fields += [(2, f"up {record['bytes_up'] / 1e6:.1f} MB"), (1, f"down {record['bytes_down'] / 1e6:.1f} MB"),
               (5, f"{record['seconds']:.2f} s")]
    if "epsilon" in record:
        fields.append((6, f"ε {record['epsilon']:.3f}"))
    line = "  ".join(text for _, text in fields)
    if width is None:
        return line
    for drop in range(1, 7):
        if len(line) < width:
            break
        fields = [(rank, text) for rank, text in fields if rank == 0 or rank > drop]
        line = "  ".join(text for _, text in fields)
    return line if len(line) < width else line[: max(width - 2, 1)] + "…"
