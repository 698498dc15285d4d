"""What a spec that arrives over the API may ask of this server.

A local `shapetune run` trusts its user; a remote one must not read the server's files or
exhaust it. On top of the spec's own validation (`parse_spec`): model directories and
prompt files only under the folders the operator configured (symlinks resolved, no `..`),
sizes within the server's limits, and the server's own database. Then the one admission
path every spec takes (`service.tuning.study.admission.admit`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from service.settings import Settings
from service.tuning.spec.model import SpecError, StudySpec, TaskSpec, parse_spec
from service.tuning.study.admission import admit as admit_here

PATH_OPTIONS: dict[str, dict[str, str]] = {
    "hf": {"policy": "model", "reward_model": "model", "prompts": "prompt"},
}
"""Task options that name a file or folder on the server: task -> option -> kind."""


def admit(data: Any, settings: Settings) -> StudySpec:
    """The spec to queue, with its paths resolved; a `SpecError` names every problem."""
    spec = parse_spec(data)
    problems = _limits(spec, settings)
    if spec.storage is not None:
        problems.append(
            "storage: studies submitted to a server run in the server's database; remove it"
        )
    options, path_problems = _paths(spec.task, settings)
    problems += path_problems
    if problems:
        raise SpecError(problems)
    # Store the resolved paths: a symlink swapped after admission cannot redirect the run.
    spec = spec.model_copy(update={"task": TaskSpec(name=spec.task.name, options=options)})
    admit_here(spec, settings.resolved_home(), settings.storage_url(), settings.executor)
    return spec


def _limits(spec: StudySpec, settings: Settings) -> list[str]:
    config = spec.base  # sizes are not searched
    sizes: list[tuple[str, Any, int, str]] = [
        ("budget", spec.budget, settings.max_budget, "MAX_BUDGET"),
        ("seeds", spec.seeds, settings.max_seeds, "MAX_SEEDS"),
        ("inner.steps", config.steps, settings.max_inner_steps, "MAX_INNER_STEPS"),
        ("inner.eval_prompts", config.eval_prompts, settings.max_eval_prompts, "MAX_EVAL_PROMPTS"),
        (
            "inner.ppo.rollout_batch",
            config.ppo.rollout_batch,
            settings.max_rollout_batch,
            "MAX_ROLLOUT_BATCH",
        ),
        (
            "inner.ppo.response_length",
            config.ppo.response_length or 0,
            settings.max_response_length,
            "MAX_RESPONSE_LENGTH",
        ),
        (
            "inner.torch_threads",
            config.torch_threads,
            settings.max_torch_threads,
            "MAX_TORCH_THREADS",
        ),
    ]
    task_limits = {
        "response_length": (settings.max_response_length, "MAX_RESPONSE_LENGTH"),
        "eval_prompts": (settings.max_eval_prompts, "MAX_EVAL_PROMPTS"),
        "train_prompts": (settings.max_train_prompts, "MAX_TRAIN_PROMPTS"),
    }
    for option, (limit, variable) in task_limits.items():
        if option in spec.task.options:
            sizes.append((f"task.options.{option}", spec.task.options[option], limit, variable))
    problems = []
    for field, value, limit, variable in sizes:  # whole numbers: `parse_spec` checked types
        if value > limit:
            problems.append(
                f"{field}: {value} is over this server's limit of {limit} (SHAPETUNE_{variable})"
            )
    return problems


def _paths(task: TaskSpec, settings: Settings) -> tuple[dict[str, Any], list[str]]:
    roots = {"model": settings.model_roots, "prompt": settings.prompt_roots}
    options, problems = dict(task.options), []
    for option, kind in PATH_OPTIONS.get(task.name, {}).items():
        if option not in options:
            continue  # the task itself names what is missing
        resolved, problem = _under_roots(options[option], roots[kind], kind)
        if problem:
            problems.append(f"task.options.{option}: {problem}")
        else:
            options[option] = resolved
    return options, problems


def _under_roots(value: Any, roots: list[Path], kind: str) -> tuple[str, str | None]:
    """The real path of `value` if it lies under one of `roots`, else why not. The reason
    never names where a symlink points: that would tell the server's layout."""
    variable = f"SHAPETUNE_{kind.upper()}_ROOTS"
    if not roots:
        return "", f"this server accepts no {kind} paths (its operator sets {variable})"
    allowed = ", ".join(str(r) for r in roots)
    if not isinstance(value, str) or not value or "\x00" in value:
        return "", f"give a path under {allowed} (got {value!r})"
    path = Path(value)
    if not path.is_absolute():
        return "", f"{value!r} is relative; give an absolute path under {allowed}"
    if ".." in path.parts:
        return "", f"{value!r} climbs out with '..'; give a path under {allowed}"
    real = Path(os.path.realpath(path))
    if not any(real.is_relative_to(os.path.realpath(root.expanduser())) for root in roots):
        return "", f"{value!r} lies outside the folders this server allows ({allowed})"
    if kind == "model" and not real.is_dir():
        return "", f"{value!r} is not a directory"
    if kind == "prompt" and not real.is_file():
        return "", f"{value!r} is not a file"
    return str(real), None
