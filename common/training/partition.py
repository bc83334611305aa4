"""Deterministic, disjoint splits of a training set across clients (IID or Dirichlet label skew)."""

from __future__ import annotations

import torch


def parse_partition(text: str) -> tuple[int, int]:
    """'2/4' -> (2, 4), with I counted from 0."""
    try:
        i, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"--partition must look like I/N (e.g. 0/4), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"--partition {text}: need N >= 1 and 0 <= I < N")
    return i, n


def iid_indices(num_examples: int, num_parts: int, seed: int) -> list[torch.Tensor]:
    order = torch.randperm(num_examples, generator=torch.Generator().manual_seed(seed))
    return [part.sort().values for part in torch.tensor_split(order, num_parts)]


def dirichlet_indices(labels: torch.Tensor, num_parts: int, alpha: float, seed: int) -> list[torch.Tensor]:
    """Per class, proportions across clients drawn from Dir(α); small α gives each client few classes."""
    if alpha <= 0:
        raise ValueError(f"--alpha must be > 0, got {alpha}")
    gen = torch.Generator().manual_seed(seed)
    parts: list[list[torch.Tensor]] = [[] for _ in range(num_parts)]
    concentration = torch.full((num_parts,), float(alpha))
    for cls in torch.unique(labels).tolist():
        members = torch.nonzero(labels == cls).flatten()
        members = members[torch.randperm(len(members), generator=gen)]
        proportions = torch._sample_dirichlet(concentration.double(), generator=gen)
        cuts = (torch.cumsum(proportions, 0) * len(members)).round().long().tolist()[:-1]
        for part, chunk in zip(parts, torch.tensor_split(members, cuts)):
            part.append(chunk)
    return [torch.cat(p).sort().values if p else torch.empty(0, dtype=torch.long) for p in parts]


def partition_indices(labels: torch.Tensor, index: int, num_parts: int, scheme: str = "iid", alpha: float = 0.5,
                      seed: int = 0) -> torch.Tensor:
    if scheme == "iid":
        return iid_indices(len(labels), num_parts, seed)[index]
    if scheme == "dirichlet":
        return dirichlet_indices(labels, num_parts, alpha, seed)[index]
    raise ValueError(f"--partition-scheme must be iid or dirichlet, got {scheme!r}")
