"""The README's demo command, end to end: 4 client processes, 10 rounds, ≥ 0.93 accuracy on digits."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_demo_reaches_093_and_writes_the_run_directory(tmp_path: Path) -> None:
    run_dir = tmp_path / "demo"
    result = subprocess.run([sys.executable, "-m", "fedstream.cli", "demo", "--clients", "4", "--rounds", "10",
                             "--run-dir", str(run_dir)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "round 10/10" in result.stdout and "final accuracy" in result.stdout
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 10 and all(r["clients"] == 4 for r in records)
    assert records[-1]["eval_accuracy"] >= 0.93
    for name in ("accuracy.png", "model.safetensors"):
        assert (run_dir / name).stat().st_size > 0
