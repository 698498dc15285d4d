"""The `shapetune` command line."""

from __future__ import annotations

import inspect
import json
import logging
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from service.settings import get_settings

app = typer.Typer(
    help="Tune dense reward shaping for RLHF.", no_args_is_help=True, add_completion=False
)
tasks_app = typer.Typer(help="The tasks PPO can run on.", no_args_is_help=True)
app.add_typer(tasks_app, name="tasks")
console = Console()

HomeOption = Annotated[
    Path | None,
    typer.Option("--home", help="Cache folder (default: $SHAPETUNE_HOME or ~/.shapetune)."),
]


def _home(home: Path | None) -> Path:
    return home.expanduser().resolve() if home else get_settings().resolved_home()


def _fail(message: str) -> typer.Exit:
    console.print(f"[red]error:[/red] {message}")
    return typer.Exit(code=2)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


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
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress log.")] = False,
) -> None:
    """Build the built-in imdb-sentiment task (tokenizer, policy, reward model) and cache it."""
    from trainers.tasks.imdb.config import PrepareConfig
    from trainers.tasks.imdb.prepare import prepare as run_prepare

    _setup_logging(verbose=not quiet)
    try:
        config = PrepareConfig(size=size, seed=seed)
    except ValueError as e:
        raise _fail(str(e)) from e
    result = run_prepare(_home(home), config, force=force)
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
        html_out.write_text(heatmap_html(tokens, score, rows), encoding="utf-8")
        console.print(f"heatmap page: {html_out}")
    if png_out:
        heatmap_png(tokens, score, rows, png_out)
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


if __name__ == "__main__":
    app()
