"""Real server and client processes over loopback gRPC, training the digits MLP."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from fedstream.common.tasks import load_task
from tests.harness import start_client, start_server, wait_all

pytestmark = pytest.mark.slow


def run_federation(tmp: Path, name: str, clients: int = 3, rounds: int = 3, extra: tuple[str, ...] = (),
                   slow_client: int | None = None) -> Path:
    """slow_client trains 8× slower (it sleeps), so it uploads last even on a loaded machine: runs can differ in
    arrival order."""
    run_dir = tmp / name
    server = start_server(run_dir, "--rounds", str(rounds), "--min-clients", str(clients), "--seed", "7",
                          "--round-timeout", "120", "--reproducible", *extra)
    try:
        procs = [start_client(server, "--partition", f"{i}/{clients}", "--device", "cpu",
                              "--save-updates", str(tmp / f"{name}-updates"),
                              *(["--slowdown", "8"] if i == slow_client else [])) for i in range(clients)]
        assert server.wait(timeout=240) == 0, server.log()[-3000:]
        codes = wait_all(procs, timeout=60)
        assert codes == [0] * clients, (codes, [server.client_log(i)[-2000:] for i in range(clients)])
    finally:
        server.stop()
    return run_dir


def offline_fedavg(updates_dir: Path, rounds: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(7)
    state = {k: v.clone() for k, v in load_task("digits").make_model().state_dict().items()}
    by_round: dict[int, list[tuple[dict, int, int]]] = defaultdict(list)
    for path in sorted(updates_dir.glob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
        by_round[int(meta["round"])].append((load_file(str(path)), int(meta["num_examples"]), int(meta["base_version"])))
    for r in range(1, rounds + 1):
        items = by_round[r]
        assert items and all(base == r - 1 for _, _, base in items)
        total = sum(n for _, n, _ in items)
        for name in state:
            state[name] = state[name] + sum(d[name].double() * n for d, n, _ in items).float() / total
    return state


def test_three_clients_three_rounds_equal_offline_fedavg_and_repeat_exactly(tmp_path: Path) -> None:
    """The repeat has another client upload last; --reproducible folds in client-id order, so the models are
    bit-identical all the same."""
    first = run_federation(tmp_path, "a", slow_client=0)
    records = [json.loads(line) for line in (first / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [1, 2, 3]
    for r in records:
        assert r["clients"] == 3 and r["bytes_up"] > 0 and r["bytes_down"] > 0
        for key in ("train_loss", "eval_loss", "eval_accuracy", "seconds"):
            assert isinstance(r[key], float)
    assert records[-1]["eval_accuracy"] > 0.8
    assert (first / "accuracy.png").stat().st_size > 1000
    final = load_file(str(first / "model.safetensors"))
    expected = offline_fedavg(tmp_path / "a-updates", 3)
    for name, tensor in expected.items():
        assert torch.allclose(final[name], tensor, atol=1e-6), name

    second = load_file(str(run_federation(tmp_path, "b", slow_client=2) / "model.safetensors"))
    assert arrival_order(tmp_path, "a") != arrival_order(tmp_path, "b"), "the two runs must differ in arrival order"
    for name in final:
        assert torch.equal(final[name], second[name]), name


def arrival_order(tmp: Path, name: str) -> list[str]:
    """The order in which the server accepted round 1's updates, from its log."""
    log = (tmp / f"{name}.server.log").read_text()
    return re.findall(r"round=1 client=(\S+) update accepted", log)
