"""Pruning the global model on a schedule: which sparsity after which round, and the masks that follow.

A schedule is written `0.5,0.8,0.9` (targets spread over the first part of the run, so the last rounds train
the sparsest model) or `2:0.5,4:0.8,6:0.9` (after round 2 prune to 50%, ...). Masks only grow: a pruned weight
stays zero, because clients keep it at zero and the server re-applies the masks after every aggregation.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn

from fedstream.common.training.pruning import masks_of, prunable, prune, sparsity


@dataclass(frozen=True)
class PruneSchedule:
    steps: tuple[tuple[int, float], ...] = ()

    @classmethod
    def parse(cls, text: str, rounds: int) -> "PruneSchedule":
        """`S1,S2,...` spread over a run of `rounds`, or explicit `ROUND:SPARSITY` pairs; '' means no pruning."""
        items = [item.strip() for item in text.split(",") if item.strip()]
        if not items:
            return cls()
        explicit = [":" in item for item in items]
        if any(explicit) and not all(explicit):
            raise ValueError(f"prune schedule {text!r} mixes ROUND:SPARSITY pairs and bare sparsities; use one form")
        steps: dict[int, float] = {}
        for i, item in enumerate(items, start=1):
            round_text, _, value_text = item.rpartition(":")
            try:
                value = float(value_text)
                after = int(round_text) if round_text else max(1, (i * rounds) // (len(items) + 1))
            except ValueError:
                raise ValueError(f"prune schedule entry {item!r} is not SPARSITY or ROUND:SPARSITY "
                                 "(e.g. 0.5,0.8,0.9 or 2:0.5,4:0.8)") from None
            if not 0.0 < value < 1.0:
                raise ValueError(f"prune schedule entry {item!r}: sparsity must be in (0, 1)")
            if not 1 <= after <= rounds:
                raise ValueError(f"prune schedule entry {item!r}: round {after} is outside this run's 1..{rounds}")
            steps[after] = max(value, steps.get(after, 0.0))
        ordered = tuple(sorted(steps.items()))
        for (r0, s0), (r1, s1) in zip(ordered, ordered[1:]):
            if s1 < s0:
                raise ValueError(f"prune schedule {text!r} lowers sparsity from {s0} (round {r0}) to {s1} (round {r1}); "
                                 "pruned weights cannot come back")
        return cls(ordered)

    def __bool__(self) -> bool:
        return bool(self.steps)

    def target_after(self, round_number: int) -> float | None:
        """The sparsity to prune to after closing this round (None: no step here)."""
        return dict(self.steps).get(round_number)

    def reached_by(self, round_number: int) -> float:
        """The sparsity the global model has after this round closed (0 before the first step)."""
        return max((s for r, s in self.steps if r <= round_number), default=0.0)


class GlobalPruning:
    """The server's masks: re-applied after each aggregation, tightened at the schedule's steps."""

    def __init__(self, schedule: PruneSchedule, reference: nn.Module | Mapping[str, torch.Tensor]) -> None:
        self.schedule = schedule
        self.names = prunable(reference) if schedule else []
        self.masks: OrderedDict[str, torch.Tensor] = OrderedDict()

    @property
    def masked(self) -> list[str]:
        return list(self.masks)

    def restore(self, state: Mapping[str, torch.Tensor], completed_rounds: int) -> None:
        """After a restart: masks recovered from the checkpointed model's zeros."""
        if self.schedule and self.schedule.reached_by(completed_rounds) > 0:
            self.masks = masks_of(state, self.names)

    def after_round(self, round_number: int, state: "OrderedDict[str, torch.Tensor]") -> bool:
        """Keeps pruned weights at zero in the new model and prunes further at a schedule step.

        Replaces the pruned tensors in `state` (never edits them in place: downloads may still stream the old
        ones). Returns True when the masks changed.
        """
        for name, mask in self.masks.items():
            state[name] = state[name].masked_fill(~mask, 0)
        target = self.schedule.target_after(round_number) if self.schedule else None
        if target is None:
            return False
        pruned = OrderedDict((name, state[name].clone()) for name in self.names)
        new_masks = prune(pruned, target)
        for name, mask in new_masks.items():
            if name in self.masks:
                mask &= self.masks[name]
                pruned[name].masked_fill_(~mask, 0)
            state[name] = pruned[name]
        self.masks = new_masks
        return True

    def metrics(self, state: Mapping[str, torch.Tensor]) -> dict[str, float]:
        if not self.schedule:
            return {}
        return {"sparsity": round(sparsity(state, self.names), 6)}
