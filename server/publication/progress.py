"""Terminal progress for the round loop: a rich bar on a terminal, one plain line per round otherwise."""

from __future__ import annotations

import sys
import time
from typing import Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class RoundProgress:
    def __init__(self, total_rounds: int, done: int = 0) -> None:
        self.console = Console(file=sys.stdout)
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
        scores = f"acc {record['eval_accuracy']:.4f}  loss {record['eval_loss']:.4f}" if evaluated else "acc -"
        line = (f"round {record['round']}/{self.total}  clients {record['clients']}/{record['selected']}  {scores}  "
                f"up {record['bytes_up'] / 1e6:.1f} MB  down {record['bytes_down'] / 1e6:.1f} MB  "
                f"{record['seconds']:.2f} s")
        if "epsilon" in record:
            line += f"  ε {record['epsilon']:.3f}"
        self.progress.update(self.task_id, completed=record["round"], status=scores.split("  ")[0])
        self.console.print(line, highlight=False)

    def callback(self) -> Callable[[dict], None]:
        return self.round_done
