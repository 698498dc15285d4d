"""Ray core tasks, one per inner run (not Ray Tune: Optuna owns the loop and the state).

A local cluster is started on loopback addresses only; `address` joins an existing one.
A task whose worker process dies is retried by Ray (`max_retries`) and resumes from the
inner run's last checkpoint; past the retries the outcome carries the error.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import ray
from ray.exceptions import RayError, RayTaskError

from service.executor.base import Executor, Job, JobFn, Outcome

log = logging.getLogger(__name__)

WORKER_RETRIES = 3


def joined_cluster_fit(cpus: float, gpus: float) -> int:
    """How many inner runs of `cpus` and `gpus` the Ray cluster this process joined holds at
    once; `ValueError` if not one. A process that has joined none cannot tell: 1."""
    if not ray.is_initialized():
        return 1
    available = ray.cluster_resources()
    fit = math.floor(available.get("CPU", 1) / cpus) if cpus else 1
    if gpus:
        fit = min(fit, math.floor(available.get("GPU", 0) / gpus))
    if fit < 1:
        raise ValueError(
            f"the Ray cluster ({available.get('CPU', 0):g} CPUs, {available.get('GPU', 0):g} "
            f"GPUs) cannot fit one inner run of resources.cpus={cpus:g} and "
            f"resources.gpus={gpus:g}; lower them, or add nodes with those resources"
        )
    return fit


class RayExecutor(Executor):
    def __init__(
        self, cpus: float = 1.0, gpus: float = 0.0, workers: int = 0, address: str | None = None
    ) -> None:
        if not ray.is_initialized():
            if address is None:
                # Bind every Ray process to 127.0.0.1, never to the machine's other addresses.
                os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
            ray.init(
                # "local": a cluster of its own, never one some other process left running.
                address=address or "local",
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
        self.cpus, self.gpus = cpus, gpus
        fit = joined_cluster_fit(cpus, gpus)
        self.slots = min(workers, fit) if workers else fit
        self._pending: dict[Any, Job] = {}

    def submit(self, fn: JobFn, job: Job) -> None:
        remote = ray.remote(num_cpus=self.cpus, num_gpus=self.gpus, max_retries=WORKER_RETRIES)(fn)
        self._pending[remote.remote(job)] = job

    def wait(self, timeout_s: float) -> list[Outcome]:
        if not self._pending:
            return []
        ready, _ = ray.wait(list(self._pending), num_returns=1, timeout=timeout_s)
        ready, _ = ray.wait(list(self._pending), num_returns=len(ready) or 1, timeout=0)
        out = []
        for ref in ready:
            job = self._pending.pop(ref)
            try:
                out.append(Outcome(job, result=ray.get(ref)))
            except RayTaskError as e:  # the job raised: a bug, not a lost worker
                raise e.as_instanceof_cause() from None
            except RayError as e:  # the worker died more often than Ray retries
                log.warning("inner run lost: %s", e)
                out.append(Outcome(job, error=f"{type(e).__name__}: {e}"))
        return out

    def running(self) -> int:
        return len(self._pending)

    def shutdown(self) -> None:
        for ref in self._pending:
            ray.cancel(ref, force=True)
        self._pending.clear()
