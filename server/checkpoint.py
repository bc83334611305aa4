"""Run checkpoints: the global model and strategy state as safetensors, the counters as JSON.

Every file is written to a temporary name and renamed into place, and `state.json` (written last) names the
model file it belongs to, so a crash at any point leaves the previous checkpoint loadable and a torn one unread.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

FORMAT = 1


@dataclass
class Checkpoint:
    global_state: "OrderedDict[str, torch.Tensor]"
    version: int
    completed_rounds: int
    strategy_state: dict[str, torch.Tensor]
    extra: dict | None = None


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(run_dir: Path, checkpoint: Checkpoint) -> None:
    directory = Path(run_dir) / "checkpoint"
    directory.mkdir(parents=True, exist_ok=True)
    model_name = f"global-v{checkpoint.version}.safetensors"
    strategy_name = f"strategy-v{checkpoint.version}.safetensors"
    state = {k: v.contiguous() for k, v in checkpoint.global_state.items()}
    _atomic_write(directory / model_name, lambda p: save_file(state, str(p)))
    strategy_state = {k: v.contiguous() for k, v in checkpoint.strategy_state.items()}
    _atomic_write(directory / strategy_name, lambda p: save_file(strategy_state, str(p)))
    meta = {"format": FORMAT, "version": checkpoint.version, "completed_rounds": checkpoint.completed_rounds,
            "model": model_name, "strategy": strategy_name, "order": list(checkpoint.global_state),
            "extra": checkpoint.extra or {}}
    _atomic_write(directory / "state.json", lambda p: p.write_text(json.dumps(meta, indent=1)))
    for old in directory.glob("*-v*.safetensors"):
        if old.name not in (model_name, strategy_name):
            old.unlink(missing_ok=True)


def load_checkpoint(run_dir: Path) -> Checkpoint | None:
    directory = Path(run_dir) / "checkpoint"
    meta_path = directory / "state.json"
    if not meta_path.exists():
        return None
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"checkpoint {meta_path} has format {meta.get('format')}; this fedstream reads {FORMAT}")
    tensors = load_file(str(directory / meta["model"]))
    order = meta.get("order") or list(tensors)
    global_state = OrderedDict((k, tensors[k]) for k in order)
    strategy_state = load_file(str(directory / meta["strategy"]))
    return Checkpoint(global_state, int(meta["version"]), int(meta["completed_rounds"]), strategy_state,
                      meta.get("extra") or {})
