"""The last global model a client received, kept so that the next download can be only the difference."""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Callable, Mapping

import torch

from fedstream.client.transfer import Downloaded, TransferError

log = logging.getLogger("fedstream.client")


class IncrementalMismatch(TransferError):
    """A difference arrived for a version this client does not hold (it asks again for the full model)."""


class HeldModel:
    """Version, run and tensors of the copy; a difference is added in place with the server's own arithmetic."""

    def __init__(self) -> None:
        self.run_id = ""
        self.version = 0
        self.state: OrderedDict[str, torch.Tensor] | None = None

    def have_version(self, run_id: str) -> int:
        """The version to announce in DownloadRequest.have_version (0: nothing usable for this run)."""
        return self.version if self.state is not None and self.run_id == run_id else 0

    def forget(self) -> None:
        self.state, self.version, self.run_id = None, 0, ""

    def keep(self, run_id: str, version: int, state: "OrderedDict[str, torch.Tensor]") -> None:
        """Holds state (not a copy: the caller must not modify it afterwards)."""
        self.run_id, self.version, self.state = run_id, version, state

    def apply(self, run_id: str, base_version: int, version: int, diff: Mapping[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
        """held + diff, in place: the same float additions the server made, so both sides agree bit for bit."""
        if self.state is None or run_id != self.run_id or base_version != self.version:
            held = f"version {self.version} of run {self.run_id or '-'}" if self.state is not None else "no model"
            raise IncrementalMismatch(f"the server sent a difference to version {base_version}; this client holds {held}")
        if set(diff) != set(self.state):
            raise IncrementalMismatch(f"the difference names {len(diff)} tensors; the held model has {len(self.state)}")
        for name, tensor in self.state.items():  # checked before any tensor changes: a half-applied copy is wrong
            if diff[name].shape != tensor.shape:
                raise IncrementalMismatch(f"the difference has shape {list(diff[name].shape)} for {name}; "
                                          f"the held model has {list(tensor.shape)}")
        for name, tensor in self.state.items():
            if tensor.dtype.is_floating_point:
                tensor.add_(diff[name])
            else:
                tensor.copy_(diff[name])  # integer and boolean tensors travel as their new value
        self.version = version
        return self.state

    def receive(self, got: Downloaded, run_id: str, keep: bool,
                refetch: Callable[[], Downloaded]) -> tuple["OrderedDict[str, torch.Tensor]", Downloaded]:
        """The round's global model from a download: a difference is applied to the held copy; a full model is
        held when the server serves differences (`keep`). A difference that does not fit is fetched again in full."""
        if got.incremental:
            try:
                return self.apply(run_id, got.base_version, got.version, got.state), got
            except IncrementalMismatch as exc:
                log.warning("%s; downloading version %d in full", exc, got.version)
                self.forget()
                got = refetch()
                if got.incremental:
                    raise IncrementalMismatch(f"asked for version {got.version} in full, the server sent a difference "
                                              f"to version {got.base_version}") from None
        if keep:
            self.keep(run_id, got.version, got.state)
        else:
            self.forget()
        return got.state, got


def delta_from(base: Mapping[str, torch.Tensor], local: Mapping[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
    """local − base in fresh CPU tensors (base is the held copy and must stay intact)."""
    return OrderedDict((name, local[name].detach().to("cpu") - b) for name, b in base.items())
