"""One line of metrics.jsonl: the keys every round mode writes, plus the mode's own extras (docs/metrics.md).

Only valid JSON is written: a non-finite number (a client's train_loss of 1e308 averaged to inf, say)
becomes null rather than the `Infinity` that strict parsers refuse.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RoundRecord:
    """`round` is the round number in sync mode and the version number in async mode."""

    round: int
    version: int
    mode: str
    clients: int
    selected: int
    train_loss: float | None
    bytes_up: int
    bytes_down: int
    seconds: float
    eval_loss: float | None = None
    eval_accuracy: float | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        fields = {key: value for key, value in vars(self).items() if key != "extras"}
        return {**fields, **self.extras}

    def add_evaluation(self, evaluation: dict[str, float | None]) -> None:
        """Server-side evaluation: loss and accuracy, and every other metric the task reports as eval_<key>."""
        self.eval_loss = evaluation.get("loss")
        self.eval_accuracy = evaluation.get("accuracy")
        for key, value in evaluation.items():
            if key not in ("loss", "accuracy"):
                self.extras[f"eval_{key}"] = value


def finite_or_none(value: Any) -> Any:
    """The value with every non-finite float inside it replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def to_json_line(record: dict[str, Any]) -> str:
    return json.dumps(finite_or_none(record), allow_nan=False) + "\n"
