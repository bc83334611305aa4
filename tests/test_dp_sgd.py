"""Sample-level DP-SGD inside a client (Opacus): it learns, ε grows round after round, the noise is the client's
secret, and nothing of Opacus stays on the model. One real federation runs with DP-SGD clients."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from fedstream.client.dp_sgd import DpSgdSettings, DpSgdTrainer, check_model
from fedstream.common.tasks import load_task
from tests.harness import start_client, start_server, wait_all


def test_dp_sgd_learns_digits_spends_more_epsilon_each_round_and_leaves_no_hooks() -> None:
    task = load_task("digits", {"epochs": "2"})
    torch.manual_seed(0)
    model = task.make_model()
    names = list(model.state_dict())
    trainer = DpSgdTrainer(DpSgdSettings(noise_multiplier=1.0, max_grad_norm=1.0))
    spent = []
    for _ in range(2):
        metrics = trainer.train(task, model, task.train_data, task.defaults, torch.device("cpu"))
        spent.append(metrics["dp_sgd_epsilon"])
    assert 0 < spent[0] < spent[1] < 20, spent
    assert trainer.steps == 2 * metrics["steps"] > 0
    assert task.evaluate(model, task.test_data, torch.device("cpu"))["accuracy"] > 0.7
    assert list(model.state_dict()) == names
    assert not any(m._forward_hooks or m._backward_hooks for m in model.modules())
    assert not any(hasattr(p, "grad_sample") or hasattr(p, "summed_grad") for p in model.parameters())


def test_the_noise_does_not_follow_the_round_seed() -> None:
    """With the whole dataset as the batch (q = 1) every Poisson draw takes every example: only noise differs."""
    task = load_task("digits", {"epochs": "1"})
    settings = dataclasses.replace(task.defaults, batch_size=len(task.train_data))
    results = []
    for _ in range(2):
        torch.manual_seed(0)
        model = task.make_model()
        torch.manual_seed(123)  # what the server's round seed does in a client
        DpSgdTrainer(DpSgdSettings(1.0)).train(task, model, task.train_data, settings, torch.device("cpu"))
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert not torch.equal(results[0], results[1])


@pytest.mark.parametrize("settings,word", [((0.0,), "noise"), ((1.0, -1.0), "clipping"), ((1.0, 1.0, 2.0), "delta")])
def test_bad_settings_are_refused(settings: tuple, word: str) -> None:
    with pytest.raises(ValueError, match=word):
        DpSgdSettings(*settings)


@pytest.mark.slow
def test_a_federation_of_dp_sgd_clients_reports_the_worst_clients_epsilon(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    server = start_server(run_dir, "--rounds", "2", "--min-clients", "2", "--round-timeout", "120")
    try:
        procs = [start_client(server, "--partition", f"{i}/2", "--device", "cpu", "--dp-sgd-noise", "1.0")
                 for i in range(2)]
        assert server.wait(timeout=180) == 0, server.log()[-3000:]
        assert wait_all(procs, timeout=60) == [0, 0], [server.client_log(i)[-2000:] for i in range(2)]
    finally:
        server.stop()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [1, 2]
    assert 0 < records[0]["dp_sgd_epsilon_max"] < records[1]["dp_sgd_epsilon_max"]
    assert records[-1]["eval_accuracy"] > 0.6
    assert "DP-SGD: ε = " in server.client_log(0)


def test_tiny_batches_with_empty_poisson_draws_still_train_and_report_finite_numbers() -> None:
    task = load_task("digits", {"epochs": "3"})
    small = torch.utils.data.TensorDataset(*(t[:20] for t in task.train_data.tensors))
    settings = dataclasses.replace(task.defaults, batch_size=1)
    trainer = DpSgdTrainer(DpSgdSettings(1.0))
    model = task.make_model()
    metrics = trainer.train(task, model, small, settings, torch.device("cpu"))
    assert metrics["steps"] == 60 and math.isfinite(metrics["dp_sgd_epsilon"]) and "train_loss" not in metrics
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_model_opacus_cannot_handle_is_refused_before_joining() -> None:
    with pytest.raises(ValueError, match="GroupNorm"):
        check_model(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4)))
