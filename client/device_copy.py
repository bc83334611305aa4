"""Host <-> device copies for the client's model: pinned host buffers and non-blocking copies on a GPU.

A download lands in one host buffer; on a CUDA client that buffer is page-locked, so the copy into the model's
parameters is an asynchronous DMA instead of a staged, synchronous memcpy. The update goes back the same way:
local − global is computed on the device, one tensor at a time, and copied into the (pinned) host buffer that
the upload streams from, with a single synchronisation at the end. On a CPU client everything stays on the
CPU and no copy is added.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

import torch
from torch import nn

if TYPE_CHECKING:
    from fedstream.common.tasks import Task


def host_buffer(nbytes: int, pin: bool = False) -> torch.Tensor:
    """An uninitialised uint8 host tensor for nbytes of received model data (every byte gets written, so no
    zero-fill); page-locked when pin is set and the platform allows it."""
    if pin:
        try:
            return torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
        except RuntimeError:
            pass
    return torch.empty(nbytes, dtype=torch.uint8)


def load_state(model: nn.Module, state: Mapping[str, torch.Tensor], task: "Task | None" = None) -> None:
    """Copies a downloaded state into the model: through the task's load_federated_state when the task
    overrides it (adapters, local modules), else model.load_state_dict(state) with asynchronous copies from
    pinned host tensors to a GPU model. Never adopts the downloaded tensors: they are the delta's base."""
    from fedstream.common.tasks import Task

    if task is not None and type(task).load_federated_state is not Task.load_federated_state:
        task.load_federated_state(model, state)
        return
    own = model.state_dict()
    if not any(t.device.type == "cuda" for t in own.values()) or set(own) != set(state):
        model.load_state_dict(state)
        return
    for name, src in state.items():
        if tuple(own[name].shape) != tuple(src.shape):
            raise ValueError(f"tensor {name} has shape {list(src.shape)}; the model has {list(own[name].shape)}")
    with torch.no_grad():
        for name, src in state.items():
            dst = own[name]
            dst.copy_(src, non_blocking=dst.device.type == "cuda" and src.is_pinned())


def local_state(task: "Task", model: nn.Module, base: Mapping[str, torch.Tensor]) -> "dict[str, torch.Tensor]":
    """The model's federated tensors under the names of the downloaded base; a base tensor the task does not
    federate (a server that sends the frozen base too) maps to itself, so its delta is zero."""
    federated = task.federated_state(model)
    return {name: federated[name] if name in federated else b for name, b in base.items()}


def delta_into(global_state: Mapping[str, torch.Tensor],
               local: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
    """local − global written over the host tensors of global_state (no second model-sized host buffer)."""
    synchronize: set[torch.device] = set()
    for name, g in global_state.items():
        current = local[name].detach()
        if current.device.type == "cpu":
            if g.dtype.is_floating_point and current.dtype == g.dtype:
                torch.sub(current, g, out=g)
            else:
                g.copy_(current - g)
            continue
        asynchronous = current.device.type == "cuda" and g.is_pinned()
        difference = current - g.to(current.device, non_blocking=asynchronous)
        g.copy_(difference, non_blocking=asynchronous)
        if asynchronous:
            synchronize.add(current.device)
    for device in synchronize:
        torch.cuda.synchronize(device)
    return global_state
