"""EVALUATE tasks: after each round the clients score the new global model on their own test split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import TensorDataset

from fedstream.common.training.partition import partition_indices
from fedstream.common.tasks import load_task
from fedstream.server.modes.federated_eval import EvaluationRound
from tests.harness import start_client, start_server, wait_all


def test_evaluation_round_hands_out_one_task_per_client_and_weights_reports() -> None:
    ev = EvaluationRound(3, 3, ["a", "b"], deadline=0.0)
    assert ev.task_for("a").round == 3 and ev.task_for("a") is None and ev.task_for("zz") is None
    ev.reports["a"] = (10, {"loss": 1.0, "accuracy": 0.5})
    assert not ev.complete()
    ev.reports["b"] = (30, {"loss": 2.0, "accuracy": 0.9})
    m = ev.metrics()
    assert ev.complete() and m["federated_eval_clients"] == 2 and m["federated_eval_examples"] == 40
    assert m["federated_eval_accuracy"] == pytest.approx((10 * 0.5 + 30 * 0.9) / 40)
    assert m["federated_eval_loss"] == pytest.approx((10 * 1.0 + 30 * 2.0) / 40)


@pytest.mark.slow
def test_clients_evaluate_the_new_model_and_the_server_records_the_weighted_result(tmp_path: Path) -> None:
    server = start_server(tmp_path / "run", "--rounds", "2", "--min-clients", "2", "--federated-eval", "--seed", "3")
    try:
        procs = [start_client(server, "--partition", f"{i}/2", "--device", "cpu") for i in range(2)]
        assert server.wait(timeout=180) == 0, server.log()[-3000:]
        assert wait_all(procs, timeout=60) == [0, 0]
    finally:
        server.stop()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["federated_eval_clients"] for r in records] == [2, 2]
    task = load_task("digits")
    model = task.make_model()
    model.load_state_dict(load_file(str(tmp_path / "run" / "model.safetensors")))
    labels = task.test_data.tensors[1]
    correct, total = 0.0, 0
    for i in range(2):
        idx = partition_indices(labels, i, 2, "iid", seed=0)
        part = TensorDataset(*(t[idx] for t in task.test_data.tensors))
        correct += task.evaluate(model, part, torch.device("cpu"))["accuracy"] * len(idx)
        total += len(idx)
    assert records[-1]["federated_eval_accuracy"] == pytest.approx(correct / total, abs=1e-9)
    assert records[-1]["federated_eval_bytes_down"] > 0
