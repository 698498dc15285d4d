"""Where inner runs execute: `inline` (in this process, one at a time) or `ray`.

An executor takes jobs and gives back outcomes; only plain data (dicts of JSON values)
crosses to a worker and back, so a job can run in any process on any machine.
"""

from __future__ import annotations

from service.executor.base import Executor, Outcome
from service.executor.inline import InlineExecutor

__all__ = ["Executor", "InlineExecutor", "Outcome", "check_resources", "make_executor"]


def make_executor(
    name: str,
    *,
    cpus: float = 1.0,
    gpus: float = 0.0,
    workers: int = 0,
    ray_address: str | None = None,
) -> Executor:
    check_resources(name, cpus=cpus, gpus=gpus)
    if name == "inline":
        return InlineExecutor()
    from service.executor.ray_executor import RayExecutor  # ray is slow to import

    return RayExecutor(cpus=cpus, gpus=gpus, workers=workers, address=ray_address)


def check_resources(name: str, *, cpus: float, gpus: float) -> None:
    """Raise `ValueError` unless executor `name` can give one inner run `cpus` and `gpus`,
    as far as this process can tell without starting anything: the inline executor needs
    CUDA here for any GPU; a Ray cluster this process already joined must have room (one it
    has not joined yet is sized when it is)."""
    if name not in ("inline", "ray"):
        raise ValueError(f"unknown executor {name!r}; choose ray or inline")
    if name == "inline" and gpus:
        import torch

        if not torch.cuda.is_available():
            raise ValueError(
                f"resources.gpus={gpus:g} but this machine has no CUDA device for the "
                "inline executor; set resources.gpus: 0 or run where a GPU is"
            )
    if name == "ray":
        from service.executor.ray_executor import joined_cluster_fit

        joined_cluster_fit(cpus, gpus)
