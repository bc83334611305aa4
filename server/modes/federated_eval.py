"""Federated evaluation: after a round, sampled clients score the new global model on their own held-out data."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from fedstream.server.core.messages import Assignment, TaskKind


@dataclass
class EvaluationRound:
    number: int
    version: int
    selected: list[str]
    deadline: float
    started: float = field(default_factory=time.monotonic)
    assigned: set[str] = field(default_factory=set)
    reports: dict[str, tuple[int, dict[str, float]]] = field(default_factory=dict)
    bytes_down: int = 0
    chosen: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        self.chosen = frozenset(self.selected)

    def task_for(self, client_id: str) -> Assignment | None:
        if client_id not in self.chosen or client_id in self.assigned or client_id in self.reports:
            return None
        self.assigned.add(client_id)
        return Assignment(TaskKind.EVALUATE, round=self.number, version=self.version)

    def complete(self) -> bool:
        return len(self.reports) >= len(self.chosen)

    def metrics(self) -> dict[str, float | int | None]:
        """Example-weighted means of the clients' loss and accuracy (None when nobody reported)."""
        total = sum(n for n, _ in self.reports.values())
        out: dict[str, float | int | None] = {"federated_eval_clients": len(self.reports)}
        for key in ("loss", "accuracy"):
            values = [(n, m[key]) for n, m in self.reports.values() if key in m]
            weight = sum(n for n, _ in values)
            out[f"federated_eval_{key}"] = sum(n * v for n, v in values) / weight if weight else None
        out["federated_eval_examples"] = total
        return out
