"""Writing the global result of a run in the format Hugging Face tools load."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from fedstream.common.tasks.base import Task


def save_adapter(task: Task, model: nn.Module, state: Mapping[str, torch.Tensor], out_dir: Path) -> list[Path]:
    """Puts the global federated state into `model` and writes it with save_pretrained: adapter_model.safetensors
    and adapter_config.json for LoRA (loadable with PeftModel.from_pretrained on the base model), or the whole
    model (model.safetensors, config.json, in out_dir/hf-model) for full fine-tuning. Returns the files written; none for a task that
    is not a Hugging Face task."""
    from fedstream.common.tasks.hf.tasks import HFTask

    if not isinstance(task, HFTask):
        return []
    task.load_federated_state(model, state)
    out_dir = Path(out_dir) if task.options.lora_r else Path(out_dir) / "hf-model"  # beside, not over, model.safetensors
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    names = ("adapter_model.safetensors", "adapter_config.json") if task.options.lora_r else ("model.safetensors", "config.json")
    return [out_dir / n for n in names]
