"""The benchmarks still run end to end (fedstream only, tiny models, a git-revision baseline, a small load
run): they cannot silently rot."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def test_round_bench_runs_fedstream_beside_a_git_revision_and_prints_its_table(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "round_bench.py"), "--systems", "fedstream", "--clients", "2",
         "--params", "2M", "--rounds", "1", "--baseline", "HEAD", "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=240)
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

    header = re.search(r"^\| system \|.*\| vs HEAD \(round s ratio\) \|$", done.stdout, re.MULTILINE)
    assert header, done.stdout
    rows = dict(re.findall(r"^\| (fedstream(?:@HEAD)?) \| 2 \|.*\| ([\d.]+) \|$", done.stdout, re.MULTILINE))
    assert set(rows) == {"fedstream", "fedstream@HEAD"}, done.stdout
    assert float(rows["fedstream@HEAD"]) == 1.0 and float(rows["fedstream"]) > 0
    assert re.search(r"^fedstream vs fedstream@HEAD at 2 clients: [+-][\d.]+% round time", done.stdout, re.MULTILINE)


def test_round_bench_refuses_an_unknown_baseline_revision(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "round_bench.py"), "--systems", "fedstream", "--baseline",
         "no-such-revision-xyz", "--workdir", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "--baseline 'no-such-revision-xyz' is not a commit" in done.stderr


def test_load_bench_serves_every_client_and_reports_its_measurements(tmp_path: Path) -> None:
    out = tmp_path / "load.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "load.py"), "--clients", "20", "--rounds", "2", "--warmup", "1",
         "--settle", "0.5", "--timeout", "150", "--json", str(out)], capture_output=True, text=True, timeout=200)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert re.search(r"^\| 20 \| 21/21 \| 0 \|.*\| nothing lost \|$", done.stdout, re.MULTILINE), done.stdout
    [result] = json.loads(out.read_text())["results"]
    assert result["ok"] and result["joined"] == 21 and result["served_per_round"] == [21, 21]
    assert result["cpu_ms_per_client_round"] > 0 and result["rss_idle_joined"] > 0
    assert result["heartbeats"] >= 5 and result["heartbeat_failures"] == 0
    assert 0 < result["heartbeat_p50"] <= result["heartbeat_p99"] <= result["heartbeat_max"]
