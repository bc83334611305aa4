"""Real server and client processes: a lossy upload codec with error feedback, incremental downloads, pruning."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from fedstream.common.training.pruning import prunable
from fedstream.common.tasks import load_task
from fedstream.common.wire.tensors import state_nbytes
from tests.harness import start_client, start_server, wait_all

pytestmark = pytest.mark.slow
CLIENTS = 2


def federate(tmp: Path, name: str, rounds: int, *flags: str, client_flags: tuple[str, ...] = ()) -> tuple[Path, list[dict], list[str]]:
    run_dir = tmp / name
    server = start_server(run_dir, "--rounds", str(rounds), "--min-clients", str(CLIENTS), "--seed", "3",
                          "--round-timeout", "60", *flags)
    try:
        procs = [start_client(server, "--partition", f"{i}/{CLIENTS}", "--device", "cpu", *client_flags)
                 for i in range(CLIENTS)]
        assert server.wait(timeout=120) == 0, server.log()[-3000:]
        assert wait_all(procs, timeout=60) == [0] * CLIENTS, [server.client_log(i)[-2000:] for i in range(CLIENTS)]
        logs = [server.client_log(i) for i in range(CLIENTS)]
    finally:
        server.stop()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == list(range(1, rounds + 1))
    return run_dir, records, logs


def test_topk_uploads_with_error_feedback_and_incremental_q8_downloads(tmp_path: Path) -> None:
    model_bytes = state_nbytes(load_task("digits").make_model().state_dict())
    _, records, logs = federate(tmp_path, "topk", 3, "--upload-codec", "topk", "--topk-fraction", "0.1",
                                "--download-codec", "q8", "--incremental-download")
    for r in records:
        assert 0 < r["bytes_up"] < 0.2 * CLIENTS * model_bytes, r  # 10% of the values, with their positions
    assert records[0]["bytes_down"] == CLIENTS * model_bytes  # first download: full and lossless
    assert records[2]["downloads_incremental"] == CLIENTS and records[2]["downloads_full"] == 0
    assert records[2]["bytes_down"] < 0.3 * CLIENTS * model_bytes  # q8 difference: ~1 byte per value
    assert records[-1]["eval_accuracy"] > 0.8
    for log in logs:
        assert log.count("error feedback carries a residual") == 3, log[-2000:]


def test_pruned_global_model_stays_pruned_and_travels_sparse(tmp_path: Path) -> None:
    model_bytes = state_nbytes(load_task("digits").make_model().state_dict())
    updates = tmp_path / "updates"
    run_dir, records, _ = federate(tmp_path, "prune", 2, "--prune-schedule", "1:0.8",
                                   client_flags=("--save-updates", str(updates)))
    assert [r["sparsity"] for r in records] == [pytest.approx(0.8, abs=1e-3)] * 2
    final = load_file(str(run_dir / "model.safetensors"))
    names = prunable(final)
    for name in names:
        assert int((final[name] == 0).sum()) == round(0.8 * final[name].numel()), name
    for i in range(CLIENTS):
        delta = load_file(str(updates / f"client-{i}-round2.safetensors"))
        for name in names:
            assert bool((delta[name][final[name] == 0] == 0).all()), "a client moved a pruned weight"
            assert bool((delta[name][final[name] != 0] != 0).any()), "survivors should train"
    assert records[0]["bytes_down"] == CLIENTS * model_bytes
    assert records[1]["bytes_down"] < 0.5 * CLIENTS * model_bytes  # only surviving weights (plus a bitmap)
    assert records[1]["bytes_up"] < 0.5 * records[0]["bytes_up"]
    assert records[-1]["eval_accuracy"] > 0.8
