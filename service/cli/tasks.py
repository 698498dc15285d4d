"""`shapetune prepare | explain | train | tasks list | tasks show`: the tasks, their reward
models, and one inner PPO run, without a study."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from service.cli import render
from service.cli.options import (
    HomeOption,
    TaskOption,
    build_explainer,
    console,
    fail,
    progress_bar,
    quiet_transformers,
    resolve_home,
    setup_logging,
    stage_rows,
)


def register(app: typer.Typer) -> None:
    for command in (prepare, explain, train):
        app.command()(command)
    tasks_app = typer.Typer(help="The tasks PPO can run on.", no_args_is_help=True)
    tasks_app.command("list")(tasks_list)
    tasks_app.command("show")(tasks_show)
    app.add_typer(tasks_app, name="tasks")


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

    setup_logging(verbose=False)
    try:
        config = PrepareConfig(size=size, seed=seed)
    except ValueError as e:
        raise fail(str(e)) from e
    if quiet or as_json:  # --json: nothing but the JSON on stdout
        result = run_prepare(resolve_home(home), config, force=force)
    else:
        with progress_bar() as bar:
            result = run_prepare(
                resolve_home(home), config, force=force, on_progress=stage_rows(bar)
            )
    cache_bytes = sum(p.stat().st_size for p in result.root.rglob("*") if p.is_file())
    if as_json:
        summary: dict[str, Any] = {
            "root": str(result.root),
            "seconds": round(result.seconds, 2),
            "cache_bytes": cache_bytes,
            "stages": {
                name: {"built": rec.built, "build_seconds": rec.info.get("build_seconds")}
                for name, rec in result.stages.items()
            },
            "report": result.report,
        }
        typer.echo(json.dumps(summary, indent=2))
        return
    render.print_prepared(
        result, f"imdb-sentiment ({size}, seed {seed}) in {result.root}", cache_bytes
    )


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
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            help="A run folder (`train --run-dir`, or a trial's): explain with the methods' "
            "options and trained state there (what `amortized` credits with)."
        ),
    ] = None,
    home: HomeOption = None,
) -> None:
    """Per-token credits of one response under every method, with RM rows and time."""
    from service.heatmap import heatmap_html, heatmap_png
    from shaping.batch import BatchError
    from shaping.explain import explain as run_explain
    from trainers.tasks import TaskError, make_task

    if (text is None) == (response is None):
        raise fail("give the response either as TEXT or as --response (not both)")
    try:
        task = make_task(task_name, resolve_home(home), **_parse_options(option or []))
        prompt_ids = task.encode_prompt(prompt or "")
        response_ids = task.tokenizer(response or text, add_special_tokens=False)["input_ids"]
        if not prompt_ids:
            raise fail(f"task {task_name!r} adds no BOS token: give a non-empty --prompt")
        if not response_ids:
            raise fail("the response is empty after tokenisation: nothing to explain")
        options, states = _trained_methods(checkpoint) if checkpoint else ({}, {})
        score, rows = run_explain(
            task.load_reward_model(),
            prompt_ids,
            response_ids,
            methods=method,
            options=options,
            policy_tokenizer=task.tokenizer,
            states=states,
        )
    except (TaskError, BatchError, ValueError) as e:
        raise fail(str(e)) from e
    tokens = [str(task.tokenizer.decode([t])) for t in response_ids]
    methods = [row.method for row in rows]
    render.print_credits(tokens, score, rows)
    if html_out:
        html_out.write_text(heatmap_html(tokens, score, rows, methods), encoding="utf-8")
        console.print(f"heatmap page: {html_out}")
    if png_out:
        heatmap_png(tokens, score, rows, methods, png_out)
        console.print(f"heatmap image: {png_out}")


def _trained_methods(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The methods' options and saved state in a run's checkpoint."""
    from trainers.checkpoint import load
    from trainers.config import TrainConfig

    try:
        saved = load(run_dir)
    except Exception as e:  # a damaged or foreign file: name it, not torch's unpickler
        raise fail(f"{run_dir} holds no readable checkpoint ({type(e).__name__}: {e})") from e
    if saved is None:
        raise fail(f"{run_dir} holds no checkpoint: give the folder of a run (--run-dir)")
    config = TrainConfig.from_dict(saved["config"])
    return config.method_options(), saved.get("attributors", {})


def tasks_list() -> None:
    """List the registered tasks and their options."""
    from trainers.tasks import TASKS, task_options

    render.print_tasks({name: task_options(name) for name in TASKS})


def tasks_show(
    name: Annotated[str, typer.Argument(help="Task name (see `shapetune tasks list`).")],
    option: TaskOption = None,
    home: HomeOption = None,
) -> None:
    """Load a task and show what it holds: prompts, models, quality report."""
    from trainers.tasks import TaskError, make_task

    try:
        task = make_task(name, resolve_home(home), **_parse_options(option or []))
    except TaskError as e:
        raise fail(str(e)) from e
    render.print_task(task)


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
    from trainers.explainer import explainers_root
    from trainers.ppo import Hooks, TrainingError, check_config
    from trainers.ppo import train as run_train
    from trainers.tasks import TaskError, make_task

    setup_logging(verbose=False)
    quiet_transformers()
    folder = (
        run_dir
        or resolve_home(home) / "runs" / f"train-{task_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
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
        task = make_task(task_name, resolve_home(home), **task_options)
        check_config(config, task)  # device and lengths, before the run folder is made
    except TypeError as e:  # an unknown --ppo key
        raise fail(f"--ppo: {e}; see `shapetune train --help`") from e
    except (TaskError, ValueError) as e:
        raise fail(str(e)) from e
    console.print(f"run folder: {folder}")
    explainers = explainers_root(resolve_home(home))
    if config.shaping.weights.get("amortized", 0) > 0:  # its explainer first, with its own bars
        build_explainer(task, config.ppo.response_length or task.response_length, explainers)
    with progress_bar() as bar:
        job = bar.add_task("PPO", total=steps)

        def report(step: int, metrics: dict[str, float]) -> None:
            held_out = metrics.get("eval/rm_mean")
            note = f" | held-out RM {held_out:+.3f}" if held_out is not None else ""
            score = metrics.get("objective/scores")
            batch = f"batch RM {score:+.3f}" if score is not None else "evaluated"
            bar.update(job, completed=step, description=f"step {step}: {batch}{note}")

        try:
            result = run_train(config, task, Hooks(report=report), explainers)
        except (TaskError, ValueError) as e:
            raise fail(str(e)) from e
        except TrainingError as e:
            console.print(f"[red]training stopped:[/red] {e}")
            raise typer.Exit(code=1) from e
    render.print_train_summary(result)
    png = folder / "learning_curve.png"
    learning_curve_png(result.curves, png, f"{task_name}: {weights}")
    console.print(f"learning curve: {png}\nresult: {folder / 'result.json'}")


def _parse_options(pairs: list[str]) -> dict[str, Any]:
    """["size=tiny", "n=3"] -> {"size": "tiny", "n": 3}: JSON values, else the bare string."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise fail(f"option {pair!r} is not KEY=VALUE")
        try:
            options[key] = json.loads(raw)
        except json.JSONDecodeError:
            options[key] = raw  # a bare string such as a path
    return options


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
            raise fail(f"--weights: {part!r} is not METHOD=WEIGHT (e.g. red=0.5)") from None
    return weights


def _parse_method_options(pairs: list[str]) -> dict[str, dict[str, Any]]:
    """["shapley.unit=span"] -> {"shapley": {"unit": "span"}}."""
    options: dict[str, dict[str, Any]] = {}
    for key, value in _parse_options(pairs).items():
        method, dot, name = key.partition(".")
        if not dot or not method or not name:
            raise fail(
                f"--method-option {key!r}: write METHOD.OPTION=VALUE (e.g. shapley.unit=span)"
            )
        options.setdefault(method, {})[name] = value
    return options
