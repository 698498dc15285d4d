"""Where inner runs execute: `inline` (in this process, one at a time) or `ray`.

An executor takes jobs and gives back outcomes; only plain data (dicts of JSON values)
crosses to a worker and back, so a job can run in any process on any machine.
"""

from __future__ import annotations

from service.executor.base import Executor, Outcome
from service.executor.inline import InlineExecutor

__all__ = ["Executor", "InlineExecutor", "Outcome", "make_executor"]


def make_executor(
    name: str,
    *,
    cpus: float = 1.0,
    gpus: float = 0.0,
    workers: int = 0,
    ray_address: str | None = None,
) -> Executor:
    if name == "inline":
        return InlineExecutor()
    if name == "ray":
        from service.executor.ray_executor import RayExecutor  # ray is slow to import

        return RayExecutor(cpus=cpus, gpus=gpus, workers=workers, address=ray_address)
    raise ValueError(f"unknown executor {name!r}; choose ray or inline")
