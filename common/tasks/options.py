"""Checking a task's `--task-option` keys against the ones it knows, so a typo is refused instead of ignored."""

from __future__ import annotations

from typing import Mapping


def check_task_options(task_name: str, options: Mapping[str, str], known: Mapping[str, str]) -> None:
    """Raises ValueError naming each unknown key and listing the known ones; known maps option → description."""
    unknown = sorted(set(options) - set(known))
    if not unknown:
        return
    listing = "; ".join(f"{key}: {description}" for key, description in known.items()) or "none"
    raise ValueError(f"task {task_name} has no option {', '.join(map(repr, unknown))}; its options are {listing}")
