"""A real server and two real client processes fine-tune the tiny CI model with LoRA on the stdlib corpus."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fedstream.common.tasks import load_task
from fedstream.common.tasks.hf.adapter_files import save_adapter
from fedstream.common.tasks.hf.tiny_model import build_tiny_model
from tests.harness import start_client, start_server, wait_all

pytestmark = pytest.mark.slow


def federate(tmp_path: Path, options: dict[str, str], *server_flags: str) -> Path:
    """A server and two clients on the hf-causal-lm task for two rounds (or versions); returns the run directory."""
    flags = [f for k, v in options.items() for f in ("--task-option", f"{k}={v}")]
    run_dir = tmp_path / "run"
    server = start_server(run_dir, "--task", "hf-causal-lm", *flags, "--rounds", "2", "--min-clients", "2",
                          "--seed", "3", "--round-timeout", "120", *server_flags)
    try:
        clients = [start_client(server, "--task", "hf-causal-lm", *flags, "--partition", f"{i}/2", "--device", "cpu")
                   for i in range(2)]
        assert server.wait(timeout=240) == 0, server.log()[-3000:]
        assert wait_all(clients, timeout=60) == [0, 0], [server.client_log(i)[-2000:] for i in range(2)]
    finally:
        server.stop()
    return run_dir


def small_options(tmp_path: Path) -> dict[str, str]:
    model_dir = build_tiny_model(tmp_path / "tiny", pretrain_steps=2)
    return {"model": str(model_dir), "max_length": "32", "group_blocks": "4", "eval_blocks": "8", "steps": "3",
            "batch_size": "4"}


def test_two_clients_two_rounds_record_perplexity_and_the_adapter_round_trips(tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    options = small_options(tmp_path)
    model_dir = options["model"]
    run_dir = federate(tmp_path, options)

    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [1, 2] and all(r["clients"] == 2 for r in records)
    for r in records:
        assert math.isfinite(r["eval_perplexity"]) and r["eval_perplexity"] == pytest.approx(math.exp(r["eval_loss"]))

    task = load_task("hf-causal-lm", options)
    final = load_file(str(run_dir / "model.safetensors"))
    model = task.make_model()
    start = {n: v.clone() for n, v in task.federated_state(model).items()}
    assert set(final) == set(start), "only the federated tensors (the adapters) travel and are kept; the base never"
    assert any(not torch.equal(final[n], v) for n, v in start.items() if ".lora_B." in n)  # the adapters trained
    assert {"adapter_model.safetensors", "adapter_config.json"} <= {p.name for p in run_dir.iterdir()}
    for adapter in (run_dir, save_adapter(task, model, final, tmp_path / "adapter")[0].parent):
        loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), adapter).eval()
        assert task.evaluate(loaded, task.test_data, torch.device("cpu"))["loss"] == pytest.approx(
            records[-1]["eval_loss"], rel=1e-4)


def test_adapters_compose_with_a_lossy_codec_and_async_mode(tmp_path: Path) -> None:
    options = {**small_options(tmp_path), "lora_variant": "ffa"}
    run_dir = federate(tmp_path, options, "--mode", "async", "--buffer-size", "2", "--upload-codec", "q8")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["version"] for r in records] == [1, 2]
    assert all(math.isfinite(r["eval_perplexity"]) for r in records)
    task = load_task("hf-causal-lm", options)
    final = load_file(str(run_dir / "model.safetensors"))
    start = task.federated_state(task.make_model())
    assert all(".lora_B." in n for n in start)
    assert any(not torch.equal(final[n], v) for n, v in start.items())
