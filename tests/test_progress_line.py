"""The per-round progress line fits the terminal (a wrapped line doubles the output from round 10 on)."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

from fedstream.server.publication.progress import RoundProgress, round_line

WIDE = {"round": 12, "clients": 16, "selected": 16, "eval_accuracy": 0.96944, "eval_loss": 0.108421,
        "bytes_up": 123_456_789, "bytes_down": 987_654_321, "seconds": 12.345, "train_loss": 0.2, "epsilon": 3.14159}


def test_without_a_terminal_the_line_keeps_every_field() -> None:
    line = round_line(WIDE, 100)
    for text in ("round 12/100", "clients 16/16", "acc 0.9694", "loss 0.1084", "up 123.5 MB", "down 987.7 MB",
                 "12.35 s", "ε 3.142"):
        assert text in line
    assert len(line) > 80, "the test must start from a line that would wrap at 80 columns"


@pytest.mark.parametrize("width", [80, 60, 40, 20])
def test_at_a_terminal_width_the_line_fits_and_keeps_round_and_accuracy_first(width: int) -> None:
    line = round_line(WIDE, 100, width)
    assert len(line) < width, (width, line)
    if width >= 40:
        assert line.startswith("round 12/100  acc 0.9694") or line.startswith("round 12/100  clients"), line
        assert "acc 0.9694" in line


def test_at_80_columns_only_what_does_not_fit_is_dropped() -> None:
    line = round_line(WIDE, 100, 80)
    assert "acc 0.9694" in line and "loss 0.1084" in line and "ε 3.142" in line, line
    assert "down" not in line, "the least telling field goes first"
    assert round_line(WIDE, 100, 200) == round_line(WIDE, 100), "a line that fits is left whole"


def test_the_round_progress_prints_within_80_columns_from_round_10_on(monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    out = io.StringIO()
    progress = RoundProgress(120, console=Console(file=out, force_terminal=True, width=80))
    with progress:
        for n in (9, 10, 11, 100):
            progress.round_done({**WIDE, "round": n})
    printed = [re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", part) for part in re.split(r"[\r\n]", out.getvalue())]
    rounds = [p for p in printed if p.startswith("round ") and "loss 0.1084" in p]
    assert {p.split()[1] for p in rounds} >= {"10/120", "11/120", "100/120"}, printed
    assert all(len(p) < 80 and p.endswith("ε 3.142") for p in rounds), rounds  # whole, not wrapped
