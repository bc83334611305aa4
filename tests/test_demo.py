"""The README's demo command, end to end: 4 client processes, 10 rounds, ≥ 0.93 accuracy on digits."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
README = Path(__file__).resolve().parent.parent / "README.md"
README_TOLERANCE = 0.012
"""Runs differ by a few of the 359 test images (updates fold in arrival order): 0.012 is four images."""


def test_demo_reaches_093_and_writes_the_run_directory(tmp_path: Path) -> None:
    run_dir = tmp_path / "demo"
    result = subprocess.run([sys.executable, "-m", "fedstream.cli", "demo", "--clients", "4", "--rounds", "10",
                             "--run-dir", str(run_dir)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "round 10/10" in result.stdout and "final accuracy" in result.stdout
    printed = float(re.search(r"final accuracy (\d\.\d+) after 10 rounds \(", result.stdout).group(1))
    quoted = float(re.search(r"The demo reaches \*\*(\d\.\d+)\*\*", README.read_text()).group(1))
    assert abs(printed - quoted) <= README_TOLERANCE, (
        f"README.md quotes {quoted} for the demo; this run printed {printed:.4f}: quote what the demo prints")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 10 and all(r["clients"] == 4 for r in records)
    assert records[-1]["eval_accuracy"] >= 0.93
    for name in ("accuracy.png", "model.safetensors"):
        assert (run_dir / name).stat().st_size > 0
