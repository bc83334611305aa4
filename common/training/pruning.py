"""Magnitude pruning: zero the smallest weights for real (no rescaling) and say which survive (the mask).

`prune(model_or_state, amount)` edits the tensors in place so that each pruned tensor holds exactly
round(amount · numel) zeros, chosen among its smallest magnitudes (already-zero weights count first), and
returns {name: bool mask of survivors}. Only weight matrices and kernels (floating tensors with two or more
dimensions) are pruned by default: biases and norms are small and sensitive.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Iterable, Mapping

import torch
from torch import nn


def _state_of(model_or_state: nn.Module | Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
    if isinstance(model_or_state, nn.Module):
        return model_or_state.state_dict(keep_vars=False)
    return model_or_state


def prunable(model_or_state: nn.Module | Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the floating tensors with two or more dimensions (weight matrices, convolution kernels);
    for a module, only its parameters (buffers such as attention masks are not weights)."""
    items = model_or_state.named_parameters() if isinstance(model_or_state, nn.Module) else model_or_state.items()
    return [name for name, t in items if t.dtype.is_floating_point and t.dim() >= 2]


def _check_amount(amount: float) -> None:
    if not 0.0 <= amount < 1.0:
        raise ValueError(f"pruning amount must be in [0, 1), got {amount}; 0.9 zeroes 90% of each tensor")


@torch.no_grad()
def prune(model_or_state: nn.Module | Mapping[str, torch.Tensor], amount: float,
          names: Iterable[str] | None = None, scope: str = "layer") -> "OrderedDict[str, torch.Tensor]":
    """Zeroes the smallest-magnitude weights in place; returns the masks of the survivors.

    scope="layer" prunes each tensor to `amount`; scope="global" ranks all named tensors together, so
    layers with smaller weights lose more of them.
    """
    _check_amount(amount)
    state = _state_of(model_or_state)
    names = list(names) if names is not None else prunable(model_or_state)
    for name in names:
        if name not in state:
            raise KeyError(f"cannot prune {name!r}: the model has no such tensor")
        if not state[name].dtype.is_floating_point:
            raise ValueError(f"cannot prune {name!r}: it holds {state[name].dtype}, not floating-point weights")
    masks: OrderedDict[str, torch.Tensor] = OrderedDict()
    if scope == "layer":
        for name in names:
            masks[name] = _prune_flat([state[name]], amount)[0]
    elif scope == "global":
        for name, mask in zip(names, _prune_flat([state[n] for n in names], amount)):
            masks[name] = mask
    else:
        raise ValueError(f"pruning scope must be 'layer' or 'global', got {scope!r}")
    return masks


def _prune_flat(tensors: list[torch.Tensor], amount: float) -> list[torch.Tensor]:
    """Zeroes the round(amount · total) smallest magnitudes across tensors (in place); returns their masks."""
    sizes = [t.numel() for t in tensors]
    total = sum(sizes)
    k = int(round(amount * total))
    magnitudes = torch.cat([t.detach().reshape(-1).abs().to(torch.float32) for t in tensors]) if tensors else torch.empty(0)
    keep = torch.ones(total, dtype=torch.bool)
    if k > 0:
        keep[torch.topk(magnitudes, k, largest=False, sorted=False).indices] = False
    masks, start = [], 0
    for tensor, size in zip(tensors, sizes):
        mask = keep[start : start + size].reshape(tensor.shape)
        tensor.masked_fill_(~mask.to(tensor.device), 0)
        masks.append(mask)
        start += size
    return masks


@torch.no_grad()
def apply_masks(model_or_state: nn.Module | Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> None:
    """Sets the pruned weights back to zero in place (after an optimiser step, after aggregation)."""
    state = _state_of(model_or_state)
    for name, mask in masks.items():
        state[name].masked_fill_(~mask.to(state[name].device), 0)


def masks_of(state: Mapping[str, torch.Tensor], names: Iterable[str]) -> "OrderedDict[str, torch.Tensor]":
    """Masks recovered from a pruned model: a weight is structural zero iff it is exactly zero."""
    return OrderedDict((name, state[name] != 0) for name in names)


def sparsity(state: Mapping[str, torch.Tensor], names: Iterable[str] | None = None) -> float:
    """Fraction of exact zeros over the named tensors (all prunable tensors by default)."""
    names = list(names) if names is not None else prunable(state)
    total = sum(state[n].numel() for n in names)
    zeros = sum(int((state[n] == 0).sum()) for n in names)
    return zeros / total if total else 0.0
