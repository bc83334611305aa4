"""Simulated clients in Ray actors (several client ids per actor process) against a real server over gRPC."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest

from fedstream.client.simulation import actor_groups
from tests.harness import FEDSTREAM, env, start_server

needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason="simulation needs the optional extra: pip install 'fedstream[sim]'")


def test_actor_groups_cover_every_client_once() -> None:
    assert actor_groups(7, 3) == [[0, 1, 2], [3, 4, 5], [6]]
    assert actor_groups(2, 5) == [[0, 1]]
    with pytest.raises(ValueError, match="at least one client"):
        actor_groups(0, 3)


@pytest.mark.slow
@needs_ray
def test_six_clients_in_two_ray_actors_train_every_round(tmp_path: Path) -> None:
    run_dir, report = tmp_path / "run", tmp_path / "report.json"
    server = start_server(run_dir, "--rounds", "2", "--min-clients", "6", "--seed", "3", "--round-timeout", "120")
    try:
        sim = subprocess.run(FEDSTREAM + ["simulate", "--server", server.address, "--insecure", "--clients", "6",
                                          "--clients-per-actor", "3", "--cpus-per-client", "0.25", "--num-cpus", "2",
                                          "--report", str(report)],
                             env=env(), capture_output=True, text=True, timeout=240)
        assert sim.returncode == 0, sim.stdout[-3000:] + sim.stderr[-3000:]
        assert server.wait(timeout=60) == 0, server.log()[-3000:]
    finally:
        server.stop()
    summary = json.loads(report.read_text())
    assert summary["clients"] == 6 and summary["failed"] == []
    assert summary["processes"] == 2, "six client ids, two actor processes"
    assert [len(a["clients"]) for a in summary["actors"]] == [3, 3]
    assert all(r == {"exit": 0, "rounds_trained": 2} for r in summary["results"].values()), summary["results"]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(r["round"], r["clients"]) for r in records] == [(1, 6), (2, 6)]
    assert all(f"client=sim-{i} joined" in server.log() for i in range(6))
