"""Task registry: the inner problems PPO can be run on.

imdb-sentiment  the built-in task, built by `shapetune prepare`
synthetic       a cheap reward with exact Shapley values, for tests and benchmarks
hf              user-supplied policy and reward-model directories and a prompt file
"""

from __future__ import annotations

import importlib
import inspect
import math
import types
import typing
from collections.abc import Mapping
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

__all__ = [
    "TASKS",
    "Task",
    "TaskError",
    "TaskInfo",
    "check_task_options",
    "make_task",
    "task_options",
]


def task_options(name: str) -> dict[str, Any]:
    """The options a task takes, with their defaults (`inspect.Parameter.empty` if required)."""
    params = inspect.signature(_task_class(name).__init__).parameters
    return {k: p.default for k, p in params.items() if k not in ("self", "home")}


def check_task_options(name: str, options: Mapping[str, Any]) -> None:
    """Refuse unknown, missing and wrong-typed options, naming each with the valid ones."""
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
    hints = typing.get_type_hints(cls.__init__)
    wrong = [
        f"{k}={_shown(v)} should be {_type_name(hints[k])}"
        for k, v in options.items()
        if k in hints and not _is_a(v, hints[k])
    ]
    if wrong:
        raise TaskError(f"task {name!r}: " + "; ".join(wrong))


def make_task(name: str, home: Path, **options: Any) -> Task:
    """Build a task by name; unknown, missing or wrong-typed options are refused with the
    valid ones named."""
    check_task_options(name, options)
    cls = _task_class(name)
    if "home" in inspect.signature(cls.__init__).parameters:
        options = {"home": home, **options}
    return cls(**options)


def _is_a(value: Any, hint: Any) -> bool:
    """Whether an option's value has its annotated type, as a spec gives it: an integer for
    a float is fine, a bool for an integer is not, and a float must be finite."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return any(_is_a(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return (
            isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        )
    if hint is str:
        return isinstance(value, str)
    if hint is Path:
        return isinstance(value, str | Path)
    return True  # a type this check does not know: the task's own checks decide


def _type_name(hint: Any) -> str:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return " or ".join(_type_name(h) for h in typing.get_args(hint))
    names = {int: "an integer", float: "a finite number", str: "a string", bool: "true or false"}
    return names.get(hint, "None" if hint is type(None) else getattr(hint, "__name__", str(hint)))


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:68]}... ({len(text)} chars)"


def _task_class(name: str) -> type[Task]:
    if name not in TASKS:
        raise TaskError(f"unknown task {name!r}; choose one of {sorted(TASKS)}")
    module, _, cls = TASKS[name].partition(":")
    task_class: type[Task] = getattr(importlib.import_module(module), cls)
    return task_class
