"""The command line with the Hugging Face tasks: refusals exit 2 with one line, and the demo runs end to end
from a cold cache (it builds the tiny CI model with model=tiny, the path a new user takes)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
FEDSTREAM = [sys.executable, "-m", "fedstream.cli"]


def run(args: list[str], cache: Path, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(FEDSTREAM + args, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "FEDSTREAM_CACHE": str(cache)})


def test_unknown_option_and_pruning_with_adapters_are_refused(tmp_path: Path) -> None:
    model = tmp_path / "no-model-needed"
    result = run(["server", "--task", "hf-causal-lm", "--task-option", "lora_rank=4", "--insecure"], tmp_path, 60)
    assert result.returncode == 2
    assert "--task-option lora_rank=4: unknown option for hf-causal-lm; known: model, data, lora_r" in result.stderr
    from fedstream.common.tasks.hf.tiny_model import build_tiny_model

    build_tiny_model(model, pretrain_steps=0)
    result = run(["server", "--task", "hf-causal-lm", "--task-option", f"model={model}", "--prune-schedule", "0.5",
                  "--rounds", "2", "--insecure"], tmp_path, 120)
    assert result.returncode == 2 and "--prune-schedule with --task hf-causal-lm: magnitude pruning" in result.stderr


def test_demo_with_the_causal_lm_task_reports_perplexity_per_round(tmp_path: Path) -> None:
    run_dir = tmp_path / "demo"
    small = ["--task-option", "max_length=64", "--task-option", "group_blocks=8", "--task-option", "eval_blocks=16"]
    result = run(["demo", "--task", "hf-causal-lm", "--clients", "2", "--rounds", "2", "--run-dir", str(run_dir),
                  *small], tmp_path / "cache", 280)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [1, 2]
    assert all(math.isfinite(r["eval_perplexity"]) for r in records)
    assert records[-1]["eval_loss"] < records[0]["eval_loss"] + 0.05
    assert len(list((tmp_path / "cache").glob("tiny-llama-*/config.json"))) == 1
