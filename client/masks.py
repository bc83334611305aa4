"""Keeping pruned weights at zero while a client trains: the mask is re-applied after every optimiser step."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Mapping

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from fedstream.common.training.pruning import masks_of


def masks_for(state: Mapping[str, torch.Tensor], masked: list[str]) -> dict[str, torch.Tensor]:
    """Masks of the tensors the server marked as pruned, read from their exact zeros."""
    unknown = [name for name in masked if name not in state]
    if unknown:
        raise ValueError(f"the server marked {unknown[0]!r} as pruned; the model has no such tensor")
    return dict(masks_of(state, masked))


@contextmanager
def keep_pruned(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """Within the block, every optimiser step that updates this model's masked parameters re-zeroes them.

    The hook is global to torch optimisers (a task builds its own optimiser inside `train`) but touches only
    this model's parameters, and is removed when the block ends.
    """
    if not masks:
        yield
        return
    params = dict(model.named_parameters())
    missing = [name for name in masks if name not in params]
    if missing:
        raise ValueError(f"pruned tensor {missing[0]!r} is not a trainable parameter of the model")
    targets = [(params[name], masks[name].to(params[name].device)) for name in masks]
    watched = {id(p) for p, _ in targets}

    def reapply(optimizer: torch.optim.Optimizer, args, kwargs) -> None:
        if not any(id(p) in watched for group in optimizer.param_groups for p in group["params"]):
            return
        with torch.no_grad():
            for param, mask in targets:
                param.masked_fill_(~mask, 0)

    handle = register_optimizer_step_post_hook(reapply)
    try:
        yield
    finally:
        handle.remove()
        with torch.no_grad():
            for param, mask in targets:
                param.masked_fill_(~mask, 0)
