"""The executor interface."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Job = Any
"""A frozen dataclass of plain data (`service.tuning.contracts.InnerJob`): it may cross to
a worker on another machine."""
JobFn = Callable[[Any], Any]


@dataclass(frozen=True)
class Outcome:
    """A finished job: its `result`, or `error` when the worker itself was lost (a crash,
    a kill) rather than the job reporting a failure of its own."""

    job: Job
    result: Any = None
    error: str | None = None


class Executor(ABC):
    """Runs `fn(job)` for submitted jobs, up to `slots` at once."""

    slots: int

    @abstractmethod
    def submit(self, fn: JobFn, job: Job) -> None: ...

    @abstractmethod
    def wait(self, timeout_s: float) -> list[Outcome]:
        """Outcomes of jobs that finished since the last call; waits up to `timeout_s` for
        at least one while any job is running."""

    @abstractmethod
    def running(self) -> int: ...

    def shutdown(self) -> None:
        return None
