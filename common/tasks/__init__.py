"""Built-in tasks and loading a user's task by import path."""

from __future__ import annotations

import importlib
from typing import Callable

from fedstream.common.tasks.base import Task, TrainSettings
from fedstream.common.tasks.options import check_task_options

BUILTIN = {"digits": "fedstream.common.tasks.digits:make_task", "synthetic": "fedstream.common.tasks.synthetic:make_task",
           "hf-causal-lm": "fedstream.common.tasks.hf.tasks:make_causal_lm_task",
           "hf-sequence-classification": "fedstream.common.tasks.hf.tasks:make_sequence_classification_task"}

__all__ = ["Task", "TrainSettings", "load_task", "check_task_options", "BUILTIN"]


def load_task(name: str, options: dict[str, str] | None = None) -> Task:
    """A built-in task by name, or `package.module:function` returning a Task."""
    target = BUILTIN.get(name, name)
    if ":" not in target:
        raise ValueError(f"unknown task {name!r}; use one of {', '.join(BUILTIN)} or package.module:make_task")
    module_name, _, attr = target.partition(":")
    try:
        factory: Callable[[dict[str, str]], Task] = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot load task {name!r}: {exc}") from None
    task = factory(dict(options or {}))
    if not isinstance(task, Task):
        raise ValueError(f"task factory {target} returned {type(task).__name__}, not fedstream.common.tasks.Task")
    return task
