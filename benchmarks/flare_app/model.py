"""The same model as fedstream's `synthetic` task (common/tasks/synthetic.py) and Flower's app
(flower_app/fedbench/model.py), rebuilt here because FLARE ships a job's own modules to its server and clients
and runs them in its own environment, where fedstream cannot be imported."""

from __future__ import annotations

import torch
from torch import nn

CLASSES = 10
_SUFFIX = {"k": 1e3, "m": 1e6, "g": 1e9, "b": 1e9}


def parse_count(text: str) -> int:
    text = text.strip().lower()
    if text and text[-1] in _SUFFIX:
        return int(float(text[:-1]) * _SUFFIX[text[-1]])
    return int(float(text))


class SyntheticMLP(nn.Module):
    def __init__(self, params: int, width: int) -> None:
        super().__init__()
        head = width * CLASSES + CLASSES
        per_layer = width * width + width
        layers = max(1, round((params - head) / per_layer))
        self.hidden = nn.ModuleList(nn.Linear(width, width) for _ in range(layers))
        self.head = nn.Linear(width, CLASSES)


def make_model(params_text: str, initialise: bool = True) -> nn.Module:
    """The model; initialise=False leaves the weights unset (for a client that loads them right away)."""
    params = parse_count(params_text)
    width = 4096 if params > 100_000_000 else (1024 if params >= 2_000_000 else 64)
    if initialise:
        torch.manual_seed(0)
        return SyntheticMLP(params, width)
    with torch.device("meta"):
        model = SyntheticMLP(params, width)
    return model.to_empty(device="cpu")
