"""Task registry: the inner problems PPO can be run on.

imdb-sentiment  the built-in task, built by `shapetune prepare`
synthetic       a cheap reward with exact Shapley values, for tests and benchmarks
hf              user-supplied policy and reward-model directories and a prompt file
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any

from trainers.tasks.base import Task, TaskError, TaskInfo

# Imported on first use: a task module pulls in torch and transformers, and commands such
# as a cached `shapetune prepare` should not pay for that.
TASKS: dict[str, str] = {
    "imdb-sentiment": "trainers.tasks.imdb.task:ImdbSentimentTask",
    "synthetic": "trainers.tasks.synthetic:SyntheticTask",
    "hf": "trainers.tasks.hf:HFTask",
}

__all__ = ["TASKS", "Task", "TaskError", "TaskInfo", "make_task", "task_options"]


def task_options(name: str) -> dict[str, Any]:
    """The options a task takes, with their defaults (`inspect.Parameter.empty` if required)."""
    params = inspect.signature(_task_class(name).__init__).parameters
    return {k: p.default for k, p in params.items() if k not in ("self", "home")}


def make_task(name: str, home: Path, **options: Any) -> Task:
    """Build a task by name; unknown or missing options are refused with the valid ones named."""
    cls = _task_class(name)
    known = task_options(name)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise TaskError(f"task {name!r} has no option(s) {unknown}; valid options: {sorted(known)}")
    missing = sorted(
        k for k, v in known.items() if v is inspect.Parameter.empty and k not in options
    )
    if missing:
        raise TaskError(f"task {name!r} needs option(s) {missing}")
    if "home" in inspect.signature(cls.__init__).parameters:
        options = {"home": home, **options}
    return cls(**options)


def _task_class(name: str) -> type[Task]:
    if name not in TASKS:
        raise TaskError(f"unknown task {name!r}; choose one of {sorted(TASKS)}")
    module, _, cls = TASKS[name].partition(":")
    task_class: type[Task] = getattr(importlib.import_module(module), cls)
    return task_class
