"""What the `shapetune` commands print: the tables of a task, an explanation, a training
run and a study. Numbers and weights read as `service.formatting` writes them, as on the
dashboard's pages."""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from rich.table import Table

from service.cli.options import console
from service.formatting import (
    estimate,
    interval,
    number,
    paired_interval,
    weight_row,
    weights,
)

if TYPE_CHECKING:
    from service.read.schemas import (
        Estimate,
        Reevaluation,
        StudiesPublic,
        StudyPublic,
        StudySummary,
        TrialsPublic,
        TrialSummary,
    )
    from shaping.explain import Explanation
    from trainers.ppo import TrainResult
    from trainers.tasks.base import Task
    from trainers.tasks.imdb.prepare import Prepared


# Tasks and runs


def print_prepared(result: Prepared, title: str, cache_bytes: int) -> None:
    """`prepare`: each stage built or cached, the held-out quality, the time and the size."""
    table = Table(title=title)
    table.add_column("stage")
    table.add_column("status")
    table.add_column("build s", justify="right")
    for name, rec in result.stages.items():
        table.add_row(
            name, "built" if rec.built else "cached", f"{rec.info.get('build_seconds', 0):.1f}"
        )
    console.print(table)
    table = Table(title="held-out quality")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in result.report.items():
        if isinstance(value, float):
            table.add_row(key, f"{value:.4g}")
        elif isinstance(value, int | str):
            table.add_row(key, str(value))
    console.print(table)
    _print_samples(result.report.get("samples", []))
    console.print(f"total {result.seconds:.1f} s, cache {cache_bytes / 2**20:.1f} MiB")


def _print_samples(samples: list[dict[str, Any]]) -> None:
    for sample in samples:
        console.print(
            f"[bold]{sample['prompt']}[/bold]{sample['continuation']}  "
            f"[dim](RM {sample['rm_score']:+.2f}, VADER {sample['vader']:+.2f})[/dim]"
        )


def print_credits(tokens: Sequence[str], score: float, rows: Sequence[Explanation]) -> None:
    """`explain`: one row per token, one column per method, so that long responses grow
    down, not sideways; then what each method cost."""
    table = Table(title=f"R = {score:+.4f}")
    table.add_column("token")
    for row in rows:
        table.add_column(row.method, justify="right", min_width=len(row.method))
    for t, token in enumerate(tokens):
        table.add_row(repr(token), *(f"{row.credits[t]:+.3f}" for row in rows))
    table.add_section()
    table.add_row("R - sum", *(f"{row.offset:+.3f}" for row in rows))
    table.add_row("RM rows", *(str(row.rows) for row in rows))
    table.add_row("ms", *(f"{1000 * row.seconds:.1f}" for row in rows))
    console.print(table)


def print_tasks(options: Mapping[str, Mapping[str, Any]]) -> None:
    """`tasks list`: each task with its options, and their defaults where they have one."""
    table = Table()
    table.add_column("task")
    table.add_column("options (default)")
    for name, defaults in options.items():
        shown = [k if v is inspect.Parameter.empty else f"{k}={v}" for k, v in defaults.items()]
        table.add_row(name, ", ".join(shown))
    console.print(table)


def print_task(task: Task) -> None:
    """`tasks show`: what a loaded task holds."""
    info = task.info()
    console.print(f"[bold]{info.name}[/bold]: {info.description}")
    details = dict(info.details)
    samples = details.pop("samples", [])
    table = Table()
    table.add_column("field")
    table.add_column("value")
    for key, value in details.items():
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    table.add_row("train prompts", str(len(task.prompts("train"))))
    table.add_row("eval prompts", str(len(task.prompts("eval"))))
    console.print(table)
    first = task.prompts("eval")[0]
    console.print(f"first eval prompt: {task.tokenizer.decode(first, skip_special_tokens=True)!r}")
    _print_samples(samples)  # type: ignore[arg-type]


TRAIN_COLUMNS = (
    ("RM", "eval/rm_mean"),
    ("gold", "eval/gold_mean"),
    ("KL", "eval/kl"),
    ("length", "eval/length"),
    ("repeat", "eval/repeated_token_fraction"),
    ("distinct-2", "eval/distinct_2"),
    ("train s", "cost/train_seconds"),
)
"""The held-out evaluation table of `train`: header and metric key, after the step."""


def print_train_summary(result: TrainResult) -> None:
    """`train`: the held-out curve, where the time went, and the last samples."""
    curve = Table(title="held-out evaluation")
    for name in ("step", *(name for name, _ in TRAIN_COLUMNS)):
        curve.add_column(name, justify="right")
    for step, metrics in sorted(result.curves.items()):
        curve.add_row(
            str(step), *(f"{metrics[k]:.3f}" if k in metrics else "-" for _, k in TRAIN_COLUMNS)
        )
    console.print(curve)
    steps = max(result.steps, 1)
    cost = Table(title=f"time and cost over {result.steps} steps")
    cost.add_column("item")
    cost.add_column("value", justify="right")
    for phase, seconds in result.phase_seconds.items():
        if phase == "evaluate":
            cost.add_row("evaluation s, all evaluations", f"{seconds:.3f}")
        else:
            cost.add_row(f"{phase} s / step", f"{seconds / steps:.3f}")
    shape = result.phase_seconds.get("shape", 0.0)
    train_s = sum(s for p, s in result.phase_seconds.items() if p != "evaluate")
    cost.add_row("shaping share of training time", f"{shape / max(train_s, 1e-9):.1%}")
    for key in ("cost/rm_rows_per_response", "cost/attribution_seconds"):
        if key in result.costs:
            cost.add_row(key.removeprefix("cost/"), f"{result.costs[key]:.3f}")
    cost.add_row(
        "area under the held-out RM curve",
        f"{result.final.get('objective/eval_rm_auc', float('nan')):.3f}",
    )
    console.print(cost)
    if result.stopped_early:
        console.print(f"[yellow]stopped early after {result.steps} steps[/yellow]")
    if result.samples:
        last = max(result.samples)
        for text in result.samples[last]:
            console.print(f"[dim]step {last}:[/dim] {text!r}")


# Studies: the read model's schemas, from the store or from a running service alike.


def print_studies(page: StudiesPublic, where: str) -> None:
    """`status`: the studies in the store, or of a service."""
    table = Table(title=where)
    for column in ("name", "status", "trials", "best", "sparse", "owner", "coordinator"):
        # Names whole: a narrow terminal folds the coordinator, not what a user types.
        table.add_column(column, no_wrap=column in ("name", "owner"))
    for s in page.data:
        table.add_row(
            s.name,
            s.status,
            f"{s.done}/{s.budget}",
            number(s.best_value),
            number(s.sparse_value),
            s.owner,
            _coordinator(s),
        )
    console.print(table)


def _coordinator(s: StudySummary) -> str:
    if s.coordinator:
        return s.coordinator
    if s.coordinator_lost:
        return f"lost ({s.coordinator_lost}); `shapetune resume {s.name}`"
    return "-"


def print_study(study: StudyPublic, trials: TrialsPublic) -> None:
    """`status NAME` and the end of `run`: one row per trial, then the best and the control,
    then the re-evaluation on fresh seeds if there is one."""
    methods: list[str] = study.spec.get("methods", [])
    best = study.best.trial if study.best else None
    table = Table(title=f"{study.name}: {study.status}, {study.done}/{study.budget} trials")
    # Weights as one "a/b/c" cell under a header naming the methods, so that the table fits
    # a narrow terminal; per-seed values are in `status NAME --json`.
    table.add_column("trial", justify="right")
    table.add_column("arm", no_wrap=True)
    table.add_column("/".join(methods) or "weights", no_wrap=True)
    table.add_column("objective ± s.e.", justify="right", no_wrap=True)
    table.add_column("minus sparse, paired (95 % CI)", justify="right", no_wrap=True)
    gold = "gold" in study.spec.get("objectives", [])
    if gold:
        table.add_column("gold", justify="right", no_wrap=True)
    table.add_column("state", no_wrap=True)
    for t in trials.data:
        table.add_row(
            str(t.number),
            t.label or ("best" if t.number == best else ""),
            weight_row(t.weights, methods),
            estimate(t.value, t.stderr),
            paired_interval(t.versus_sparse) + ("*" if _pooled(t.versus_sparse) else ""),
            *([number(t.gold)] if gold else []),
            _state(t),
        )
    console.print(table)
    if any(len(t.seed_values) == 2 for t in trials.data):
        pooled = [t.versus_sparse.pooled_dof or 0 for t in trials.data if t.versus_sparse]
        borrowed = (
            f"; * the interval borrows the spread of the study's paired differences "
            f"({max(pooled)} degrees of freedom)"
            if any(pooled)
            else ""
        )
        console.print(
            "2 seeds a trial: a standard error from 2 values is a guess (one degree of "
            f"freedom){borrowed}"
        )
    if study.message:
        console.print(study.message)
    if study.importance:
        ranked = sorted(study.importance.items(), key=lambda item: -item[1])
        console.print("importance (PED-ANOVA): " + ", ".join(f"{k} {v:.2f}" for k, v in ranked))
    if gold:
        front = ", ".join(map(str, study.pareto_front)) or "none yet"
        console.print(f"Pareto front ({study.spec.get('objective', 'auc')}, gold): trials {front}")
    if study.best:
        line = f"best: trial {study.best.trial} {weights(study.best.weights)} = "
        line += estimate(study.best.value, study.best.stderr)
        if study.sparse:
            line += f"; pure sparse = {estimate(study.sparse.value, study.sparse.stderr)}"
        console.print(line)
    if study.gain and study.gain.low is not None:
        then = (
            "the re-evaluation below is not"
            if study.reevaluation
            else f"`shapetune reevaluate {study.name}` tries fresh ones"
        )
        g = study.gain
        console.print(
            f"best - sparse on the study's seeds = {estimate(g.mean, g.stderr)}, 95 % CI "
            f"{interval(g.low, g.high)} (optimistic: these seeds picked the best; {then})"
        )
    print_reevaluation(study.reevaluation)


def _pooled(difference: Estimate | None) -> bool:
    return difference is not None and difference.pooled_dof is not None


def _state(t: TrialSummary) -> str:
    """The trial's state, why it failed, where it was pruned and what its seeds ran, or that
    it broke the spec's constraints."""
    if t.failed_for:
        return f"{t.state.lower()}: {t.failed_for}"
    if t.pruned_at is not None:
        return f"pruned at step {t.pruned_at} (steps run {', '.join(map(str, t.steps))})"
    if t.warm_start:
        return f"warm start from {t.warm_start}"
    shown = t.state.lower() + (f", reused from {t.reused_from}" if t.reused_from else "")
    return shown + ("" if t.feasible else ", infeasible")


def print_reevaluation(found: Reevaluation | None) -> None:
    """A study's race on fresh seeds (`shapetune reevaluate`), if it has one."""
    if found is None:
        return
    title = f"raced on fresh seeds {found.seeds} ({found.objective})"
    table = Table(title=title if found.done else f"{title}, not finished: run it again")
    for column in ("trial", "arm", "weights", "in the study", "fresh seeds", "minus sparse"):
        table.add_column(column, justify="right" if column == "trial" else "left")
    for arm in found.arms:
        table.add_row(
            str(arm.trial),
            arm.label + (f" (left after {arm.left_after} seeds)" if arm.left_after else ""),
            weights(arm.weights),
            estimate(arm.study_value, arm.study_stderr),
            estimate(arm.mean, arm.stderr),
            paired_interval(arm.versus_sparse),
        )
    console.print(table)
    console.print(found.verdict)
