"""Inline execution: each job runs to completion inside `submit`, in this process.

For tests and debugging: no pickling, breakpoints work, one job at a time.
"""

from __future__ import annotations

from service.executor.base import Executor, Job, JobFn, Outcome


class InlineExecutor(Executor):
    slots = 1

    def __init__(self) -> None:
        self._done: list[Outcome] = []

    def submit(self, fn: JobFn, job: Job) -> None:
        self._done.append(Outcome(job, result=fn(job)))

    def wait(self, timeout_s: float) -> list[Outcome]:
        done, self._done = self._done, []
        return done

    def running(self) -> int:
        return 0
