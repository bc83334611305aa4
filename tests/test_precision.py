"""Mixed-precision local training: autocast really lowers the compute dtype, weights stay float32, and the
model still learns; on the CPU here, and on CUDA where a GPU is present. One real federation uses --amp bf16."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from fedstream.common.training.precision import autocast, check_amp, grad_scaler
from fedstream.common.tasks import load_task
from tests.harness import CLIENT_DEVICE, start_client, start_server, wait_all

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("amp,dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16), ("off", torch.float32)])
def test_autocast_lowers_the_compute_dtype_only(device: str, amp: str, dtype: torch.dtype) -> None:
    layer = torch.nn.Linear(8, 4).to(device)
    with autocast(torch.device(device), amp):
        out = layer(torch.randn(2, 8, device=device))
    assert out.dtype == dtype
    assert layer.weight.dtype == torch.float32
    assert (grad_scaler(torch.device(device), amp) is not None) == (amp == "fp16")


def test_unknown_amp_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="off, bf16, fp16"):
        check_amp("fp8")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_training_learns_digits(device: str, amp: str) -> None:
    task = load_task("digits", {"epochs": "2"})
    torch.manual_seed(0)
    model = task.make_model().to(device)
    before = task.evaluate(model, task.test_data, torch.device(device))["accuracy"]
    settings = dataclasses.replace(task.defaults, amp=amp)
    metrics = task.train(model, task.train_data, settings, torch.device(device), torch.Generator().manual_seed(0))
    after = task.evaluate(model, task.test_data, torch.device(device))["accuracy"]
    assert metrics["steps"] > 0 and torch.isfinite(torch.tensor(metrics["train_loss"]))
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert before < 0.3 and after > 0.9, (before, after)


@pytest.mark.slow
def test_federation_with_bf16_clients_learns_digits(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    server = start_server(run_dir, "--rounds", "3", "--min-clients", "2", "--seed", "7", "--round-timeout", "120")
    try:
        procs = [start_client(server, "--partition", f"{i}/2", "--device", "cpu", "--amp", "bf16") for i in range(2)]
        assert server.wait(timeout=180) == 0, server.log()[-3000:]
        assert wait_all(procs, timeout=60) == [0, 0], [server.client_log(i)[-2000:] for i in range(2)]
    finally:
        server.stop()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [1, 2, 3]
    assert records[-1]["eval_accuracy"] > 0.9, (records[-1], CLIENT_DEVICE)
    assert f"training on {CLIENT_DEVICE}, amp bf16" in server.client_log(0)
