"""One admission path: whether a valid spec can run here, asked before anything is written.

`parse_spec` checks what the spec alone decides (types, ranges, the inner run at both ends of
every knob). `admit` adds what needs the machine: the task built with its options (its files
and model folders checked, no weights loaded), each inner run checked by the trainer's own
`check_config` (device, response length against the models' positions), the studies it
warm-starts from, and whether the executor can give an inner run the spec's resources.
`shapetune run`, `resume`, `reevaluate`, the API and the service's coordinator all call it,
so a spec is refused the same way everywhere: a `SpecError` naming every problem. Those
that run the study then get their executor from `executor_for`.
"""

from __future__ import annotations

from pathlib import Path

from service.executor import Executor, check_resources, make_executor
from service.tuning.search.samplers import SamplerUnavailable, check_available
from service.tuning.search.warm import check_warm_start
from service.tuning.spec.model import SpecError, StudySpec, corner_configs
from trainers.config import ConfigError
from trainers.ppo import check_config
from trainers.tasks import TaskError, make_task
from trainers.tasks.base import Task


def admit(spec: StudySpec, home: Path, url: str, executor: str | None = None) -> None:
    """Raise `SpecError` unless `spec` can run here: its inner runs built on this machine,
    its warm-start studies in the store at `url`, and `executor` (the spec's when None)
    able to give a run its resources."""
    check_runnable(spec, home)
    _check_warm_start(spec, url)
    _check_resources(spec, executor)


def check_runnable(spec: StudySpec, home: Path) -> None:
    """Raise `SpecError` unless every inner run of `spec` can be built on this machine."""
    try:
        task = make_task(spec.task.name, home, **spec.task.options)
    except TaskError as e:
        raise SpecError([f"task: {e}"]) from None
    problems: list[str] = []
    try:
        check_available(spec.sampler)
    except SamplerUnavailable as e:
        problems.append(f"sampler: {e}")
    if "gold" in spec.objectives and type(task).gold is Task.gold:
        problems.append(
            f"objectives: task {spec.task.name!r} has no gold judge to score the 'gold' "
            "objective; use a task with one (imdb-sentiment: VADER), or leave objectives out"
        )
    for config in corner_configs(spec):
        try:
            check_config(config, task)
        except ConfigError as e:
            if f"inner: {e}" not in problems:
                problems.append(f"inner: {e}")
    if problems:
        raise SpecError(problems)


def _check_resources(spec: StudySpec, executor: str | None) -> None:
    """`SpecError` unless the executor can give an inner run the spec's resources, as far as
    this process tells without starting one (`executor_for` starts it)."""
    try:
        check_resources(
            executor or spec.executor, cpus=spec.resources.cpus, gpus=spec.resources.gpus
        )
    except ValueError as e:
        raise SpecError([f"executor: {e}"]) from None


def executor_for(spec: StudySpec, name: str | None, ray_address: str | None) -> Executor:
    """The spec's executor (or `name`), sized by its resources, for a spec `admit` took;
    `SpecError` if it cannot be had (more CPUs or GPUs per run than the cluster it joined
    has)."""
    try:
        return make_executor(
            name or spec.executor,
            cpus=spec.resources.cpus,
            gpus=spec.resources.gpus,
            workers=spec.resources.workers,
            ray_address=ray_address,
        )
    except (ValueError, RuntimeError, ConnectionError) as e:
        raise SpecError([f"executor: {e}"]) from None


def _check_warm_start(spec: StudySpec, url: str) -> None:
    """`SpecError` unless every study the spec warm-starts from is in the store at `url`
    and comparable (`service.tuning.search.warm`)."""
    if spec.warm_start:
        check_warm_start(spec, url)
