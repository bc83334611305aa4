"""The round benchmark still runs end to end (fedstream only, a tiny model): it cannot silently rot."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def test_round_bench_runs_fedstream_and_prints_its_table(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "round_bench.py"), "--systems", "fedstream", "--clients", "2",
         "--params", "2M", "--rounds", "1", "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    pattern = (r"^\| fedstream \| 2 \| ([\d.]+) \| [^|]+ \| [^|]+ \| ([\d,]+) MB \| ([\d,]+) MB \| "
               r"([\d,.]+ MB|n/a[^|]*) \|")
    row = re.search(pattern, done.stdout, re.MULTILINE)
    assert row, done.stdout
    seconds, server_peak, client_peak = (float(g.replace(",", "")) for g in row.groups()[:3])
    wire = float(row.group(4).removesuffix(" MB").replace(",", "")) if row.group(4).endswith("MB") else 0.0
    assert seconds > 0 and server_peak > 50 and client_peak > 50
    model_mb = 2 * 2 * 8.4  # 2.1M float32 parameters, down and up, 2 clients
    if shutil.which("ss"):
        assert wire >= model_mb * 0.95, f"bytes on the wire ({wire} MB) below the model data moved"
    assert list(tmp_path.glob("round-bench-*/results.json")), "no raw results written"
