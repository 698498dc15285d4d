"""The `shapetune` command line."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import Progress, TaskID
from rich.table import Table

from service import cli_dashboard as dashboard_commands
from service import cli_serve as serve_commands
from service import cli_study as study_commands
from service.cli_common import HomeOption, console, progress_bar
from service.cli_common import fail as _fail
from service.cli_common import resolve_home as _home
from service.cli_common import setup_logging as _setup_logging

if TYPE_CHECKING:
    from trainers.ppo import TrainResult
    from trainers.tasks.imdb.prepare import OnProgress

app = typer.Typer(
    help="Tune dense reward shaping for RLHF.", no_args_is_help=True, add_completion=False
)
tasks_app = typer.Typer(help="The tasks PPO can run on.", no_args_is_help=True)
app.add_typer(tasks_app, name="tasks")


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


@app.command()
def prepare(
    size: Annotated[
        str, typer.Option(help="Model size: default, or tiny (seconds, for tests).")
    ] = "default",
    seed: Annotated[int, typer.Option(help="Seed of the split and of every training run.")] = 0,
    home: HomeOption = None,
    force: Annotated[bool, typer.Option("--force", help="Rebuild every stage.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Build the built-in imdb-sentiment task (tokenizer, policy, reward model) and cache it."""
    from trainers.tasks.imdb.config import PrepareConfig
    from trainers.tasks.imdb.prepare import prepare as run_prepare

    _setup_logging(verbose=False)
    try:
        config = PrepareConfig(size=size, seed=seed)
    except ValueError as e:
        raise _fail(str(e)) from e
    if quiet or as_json:  # --json: nothing but the JSON on stdout
        result = run_prepare(_home(home), config, force=force)
    else:
        with progress_bar() as bar:
            result = run_prepare(_home(home), config, force=force, on_progress=_stage_rows(bar))
    summary: dict[str, Any] = {
        "root": str(result.root),
        "seconds": round(result.seconds, 2),
        "cache_bytes": _folder_bytes(result.root),
        "stages": {
            name: {"built": rec.built, "build_seconds": rec.info.get("build_seconds")}
            for name, rec in result.stages.items()
        },
        "report": result.report,
    }
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    table = Table(title=f"imdb-sentiment ({size}, seed {seed}) in {result.root}")
    table.add_column("stage")
    table.add_column("status")
    table.add_column("build s", justify="right")
    for name, rec in result.stages.items():
        table.add_row(
            name, "built" if rec.built else "cached", f"{rec.info.get('build_seconds', 0):.1f}"
        )
    console.print(table)
    _print_report(result.report)
    console.print(f"total {result.seconds:.1f} s, cache {summary['cache_bytes'] / 2**20:.1f} MiB")


def _stage_rows(bar: Progress) -> OnProgress:
    """One row of `bar` per stage of `prepare`, added when the stage is first reported."""
    rows: dict[str, TaskID] = {}

    def show(stage: str, done: int, total: int, *, cached: bool = False) -> None:
        if stage not in rows:
            if not cached:  # a build has loaded transformers, whose own bars would break ours
                _quiet_transformers()
            rows[stage] = bar.add_task(f"{stage} (cached)" if cached else stage, total=total)
        bar.update(rows[stage], completed=done, total=total)

    return show


def _print_report(report: dict[str, Any]) -> None:
    table = Table(title="held-out quality")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in report.items():
        if isinstance(value, float):
            table.add_row(key, f"{value:.4g}")
        elif isinstance(value, int | str):
            table.add_row(key, str(value))
    console.print(table)
    for sample in report.get("samples", []):
        console.print(
            f"[bold]{sample['prompt']}[/bold]{sample['continuation']}  "
            f"[dim](RM {sample['rm_score']:+.2f}, VADER {sample['vader']:+.2f})[/dim]"
        )


def _parse_options(pairs: list[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise _fail(f"option {pair!r} is not KEY=VALUE")
        try:
            options[key] = json.loads(raw)
        except json.JSONDecodeError:
            options[key] = raw  # a bare string such as a path
    return options


TaskOption = Annotated[
    list[str] | None, typer.Option("--option", "-o", help="KEY=VALUE task option.")
]


@app.command()
def explain(
    text: Annotated[
        str | None, typer.Argument(help="A response to explain (after an empty prompt).")
    ] = None,
    prompt: Annotated[str | None, typer.Option(help="The prompt, never masked.")] = None,
    response: Annotated[str | None, typer.Option(help="The response (instead of TEXT).")] = None,
    task_name: Annotated[str, typer.Option("--task", help="Task whose RM to explain.")] = (
        "imdb-sentiment"
    ),
    option: TaskOption = None,
    method: Annotated[
        list[str] | None, typer.Option("--method", "-m", help="Only these methods (repeat).")
    ] = None,
    html_out: Annotated[Path | None, typer.Option("--html", help="Write a heatmap page.")] = None,
    png_out: Annotated[Path | None, typer.Option("--png", help="Write a heatmap image.")] = None,
    home: HomeOption = None,
) -> None:
    """Per-token credits of one response under every method, with RM rows and time."""
    from service.heatmap import heatmap_html, heatmap_png
    from shaping.batch import BatchError
    from shaping.explain import explain as run_explain
    from trainers.tasks import TaskError, make_task

    if (text is None) == (response is None):
        raise _fail("give the response either as TEXT or as --response (not both)")
    try:
        task = make_task(task_name, _home(home), **_parse_options(option or []))
        prompt_ids = task.encode_prompt(prompt or "")
        response_ids = task.tokenizer(response or text, add_special_tokens=False)["input_ids"]
        if not prompt_ids:
            raise _fail(f"task {task_name!r} adds no BOS token: give a non-empty --prompt")
        if not response_ids:
            raise _fail("the response is empty after tokenisation: nothing to explain")
        score, rows = run_explain(
            task.load_reward_model(),
            prompt_ids,
            response_ids,
            methods=method,
            policy_tokenizer=task.tokenizer,
        )
    except (TaskError, BatchError, ValueError) as e:
        raise _fail(str(e)) from e
    tokens = [str(task.tokenizer.decode([t])) for t in response_ids]
    methods = [row.method for row in rows]
    # One row per token, one column per method: long responses grow down, not sideways.
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
    if html_out:
        html_out.write_text(heatmap_html(tokens, score, rows, methods), encoding="utf-8")
        console.print(f"heatmap page: {html_out}")
    if png_out:
        heatmap_png(tokens, score, rows, methods, png_out)
        console.print(f"heatmap image: {png_out}")


@tasks_app.command("list")
def tasks_list() -> None:
    """List the registered tasks and their options."""
    from trainers.tasks import TASKS, task_options

    table = Table()
    table.add_column("task")
    table.add_column("options (default)")
    for name in TASKS:
        opts = [
            k if v is inspect.Parameter.empty else f"{k}={v}" for k, v in task_options(name).items()
        ]
        table.add_row(name, ", ".join(opts))
    console.print(table)


@tasks_app.command("show")
def tasks_show(
    name: Annotated[str, typer.Argument(help="Task name (see `shapetune tasks list`).")],
    option: TaskOption = None,
    home: HomeOption = None,
) -> None:
    """Load a task and show what it holds: prompts, models, quality report."""
    from trainers.tasks import TaskError, make_task

    try:
        task = make_task(name, _home(home), **_parse_options(option or []))
    except TaskError as e:
        raise _fail(str(e)) from e
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
    for sample in samples:  # type: ignore[attr-defined]
        console.print(
            f"[bold]{sample['prompt']}[/bold]{sample['continuation']}  "
            f"[dim](RM {sample['rm_score']:+.2f}, VADER {sample['vader']:+.2f})[/dim]"
        )


def _parse_weights(spec: str) -> dict[str, float]:
    """Parse `shapley=0.7,sparse=0.3` into {"shapley": 0.7, "sparse": 0.3}."""
    weights: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, raw = part.partition("=")
        try:
            if not name.strip():
                raise ValueError(part)
            weights[name.strip()] = float(raw)
        except ValueError:
            raise _fail(f"--weights: {part!r} is not METHOD=WEIGHT (e.g. red=0.5)") from None
    return weights


def _parse_method_options(pairs: list[str]) -> dict[str, dict[str, Any]]:
    """["shapley.unit=span"] -> {"shapley": {"unit": "span"}}."""
    options: dict[str, dict[str, Any]] = {}
    for key, value in _parse_options(pairs).items():
        method, dot, name = key.partition(".")
        if not dot or not method or not name:
            raise _fail(
                f"--method-option {key!r}: write METHOD.OPTION=VALUE (e.g. shapley.unit=span)"
            )
        options.setdefault(method, {})[name] = value
    return options


@app.command()
def train(
    task_name: Annotated[str, typer.Option("--task", help="Task to train on.")] = (
        "imdb-sentiment"
    ),
    weights: Annotated[
        str, typer.Option(help="Shaping weights on the simplex, e.g. shapley=0.7,sparse=0.3.")
    ] = "sparse=1",
    steps: Annotated[int, typer.Option(help="PPO steps.")] = 100,
    option: TaskOption = None,
    method_option: Annotated[
        list[str] | None,
        typer.Option("--method-option", "-m", help="METHOD.OPTION=VALUE, e.g. shapley.unit=span."),
    ] = None,
    ppo: Annotated[
        list[str] | None,
        typer.Option("--ppo", "-p", help="KEY=VALUE PPO setting, e.g. lr=1e-4, rollout_batch=32."),
    ] = None,
    eval_interval: Annotated[int, typer.Option(help="Evaluate every N steps.")] = 10,
    eval_prompts: Annotated[int, typer.Option(help="Held-out prompts per evaluation.")] = 64,
    checkpoint_interval: Annotated[int, typer.Option(help="Checkpoint every N steps.")] = 10,
    run_dir: Annotated[
        Path | None,
        typer.Option(
            help="Run folder (resumed if it holds a checkpoint); default under HOME/runs."
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of sampling, batches and attribution.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    threads: Annotated[int, typer.Option(help="torch threads (0 = torch's default).")] = 0,
    home: HomeOption = None,
) -> None:
    """One inner PPO run with the given shaping weights: progress, summary, learning curve."""
    import time

    from service.curves import learning_curve_png
    from trainers.config import PPOConfig, ShapingConfig, TaskConfig, TrainConfig
    from trainers.ppo import Hooks, TrainingError, check_config
    from trainers.ppo import train as run_train
    from trainers.tasks import TaskError, make_task

    _setup_logging(verbose=False)
    _quiet_transformers()
    folder = run_dir or _home(home) / "runs" / f"train-{task_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        task_options = _parse_options(option or [])
        config = TrainConfig(
            task=TaskConfig(task_name, task_options),
            shaping=ShapingConfig(
                _parse_weights(weights), _parse_method_options(method_option or [])
            ),
            ppo=PPOConfig(**_parse_options(ppo or [])),
            steps=steps,
            eval_interval=eval_interval,
            eval_prompts=eval_prompts,
            checkpoint_interval=checkpoint_interval,
            run_dir=str(folder),
            seed=seed,
            device=device,
            torch_threads=threads,
        )
        task = make_task(task_name, _home(home), **task_options)
        check_config(config, task)  # device and lengths, before the run folder is made
    except TypeError as e:  # an unknown --ppo key
        raise _fail(f"--ppo: {e}; see `shapetune train --help`") from e
    except (TaskError, ValueError) as e:
        raise _fail(str(e)) from e
    console.print(f"run folder: {folder}")
    with progress_bar() as bar:
        job = bar.add_task("PPO", total=steps)

        def report(step: int, metrics: dict[str, float]) -> None:
            held_out = metrics.get("eval/rm_mean")
            note = f" | held-out RM {held_out:+.3f}" if held_out is not None else ""
            score = metrics.get("objective/scores")
            batch = f"batch RM {score:+.3f}" if score is not None else "evaluated"
            bar.update(job, completed=step, description=f"step {step}: {batch}{note}")

        try:
            result = run_train(config, task, Hooks(report=report))
        except (TaskError, ValueError) as e:
            raise _fail(str(e)) from e
        except TrainingError as e:
            console.print(f"[red]training stopped:[/red] {e}")
            raise typer.Exit(code=1) from e
    _print_train_summary(result)
    png = folder / "learning_curve.png"
    learning_curve_png(result.curves, png, f"{task_name}: {weights}")
    console.print(f"learning curve: {png}\nresult: {folder / 'result.json'}")


def _quiet_transformers() -> None:
    """No weight-loading bars, and no padding warning for generate's finished rows (the
    trainer masks everything after a response's EOS itself)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _print_train_summary(result: TrainResult) -> None:
    curve = Table(title="held-out evaluation")
    columns = [
        ("step", None),
        ("RM", "eval/rm_mean"),
        ("gold", "eval/gold_mean"),
        ("KL", "eval/kl"),
        ("length", "eval/length"),
        ("repeat", "eval/repeated_token_fraction"),
        ("distinct-2", "eval/distinct_2"),
        ("train s", "cost/train_seconds"),
    ]
    for name, _ in columns:
        curve.add_column(name, justify="right")
    for step, metrics in sorted(result.curves.items()):
        curve.add_row(
            str(step), *(f"{metrics[k]:.3f}" if k in metrics else "-" for _, k in columns[1:])
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


study_commands.register(app)
serve_commands.register(app)
dashboard_commands.register(app)


def main() -> None:
    """The `shapetune` entry point. Bad input exits 2 with a message where it is found; an
    error that escapes every command is a bug, and the user gets one line and the file
    that holds its traceback, not the traceback."""
    try:
        app(standalone_mode=True)
    except Exception as e:  # the last resort: see above
        import tempfile
        import traceback

        with tempfile.NamedTemporaryFile(
            "w", prefix="shapetune-crash-", suffix=".log", delete=False
        ) as log:
            traceback.print_exc(file=log)
        console.print(
            f"[red]internal error:[/red] {type(e).__name__}: {str(e)[:300]}\n"
            f"This is a bug in shapetune; the traceback is in {log.name} (please report it)."
        )
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
