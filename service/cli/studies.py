"""`shapetune run | resume | reevaluate | status | cancel | schema | submit | export`: tuning
studies from the terminal.

`--storage` names the study database (default: SQLite under the home); `--url` names a
running `shapetune serve`, which `submit` needs and which `status`, `resume` and `cancel`
then ask over its REST API instead of reading the store."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from service.cli import render
from service.cli.options import (
    ExecutorOption,
    HomeOption,
    OwnerOption,
    RayAddressOption,
    StorageOption,
    TokenOption,
    UrlOption,
    build_explainer,
    console,
    default_owner,
    existing_storage,
    fail,
    progress_bar,
    resolve_home,
    resolve_storage,
    setup_logging,
)
from service.cli.sources import LocalSource, RemoteSource, SourceError, study_source
from service.formatting import number
from service.redaction import safe_url


def register(app: typer.Typer) -> None:
    for command in (run, resume, reevaluate, status, cancel, schema, submit, export):
        app.command()(command)


def run(
    spec_file: Annotated[Path, typer.Argument(help="Study spec, YAML or JSON.")],
    storage: StorageOption = None,
    executor: ExecutorOption = None,
    ray_address: RayAddressOption = None,
    home: HomeOption = None,
) -> None:
    """Run a tuning study in the foreground until its budget of completed trials."""
    from service.tuning.spec.model import SpecError, load_spec

    try:
        spec = load_spec(spec_file)
    except SpecError as e:
        raise fail(str(e)) from e
    _drive(spec, storage or spec.storage, executor, ray_address, resolve_home(home), new=True)


def resume(
    name: Annotated[str, typer.Argument(help="The study to continue.")],
    storage: StorageOption = None,
    executor: ExecutorOption = None,
    ray_address: RayAddressOption = None,
    home: HomeOption = None,
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """Continue an interrupted study to its total budget (its trials resume where they were).
    With --url: queue it again on that service."""
    if url:  # the service's coordinator drives it
        try:
            now = RemoteSource(url, token).resume(name)
        except SourceError as e:
            raise fail(str(e)) from e
        console.print(f"{name}: {now}")
        return
    home_dir = resolve_home(home)
    database = existing_storage(storage, home_dir)
    _drive(_stored_spec(database, name), database, executor, ray_address, home_dir, new=False)


def reevaluate(
    name: Annotated[str, typer.Argument(help="The study whose best shapes to race.")],
    seeds: Annotated[
        int, typer.Option("--seeds", min=2, help="Fresh seeds per arm in the first round.")
    ] = 3,
    max_seeds: Annotated[
        int, typer.Option("--max-seeds", min=2, help="Stop undecided after this many seeds.")
    ] = 10,
    round_seeds: Annotated[
        int, typer.Option("--round-seeds", min=1, help="Seeds each later round adds.")
    ] = 2,
    arms: Annotated[int, typer.Option("--arms", min=1, help="Shapes raced against sparse.")] = 3,
    trial: Annotated[
        int | None, typer.Option("--trial", help="Race this trial alone against sparse.")
    ] = None,
    storage: StorageOption = None,
    executor: ExecutorOption = None,
    ray_address: RayAddressOption = None,
    home: HomeOption = None,
) -> None:
    """Race the study's best shapes against pure sparse on fresh seeds, paired by seed, in
    rounds: a shape leaves once it is behind the leader beyond noise, and the race stops when
    the best shape beats sparse, loses to it, or is equivalent within the spec's margin, or
    at --max-seeds (undecided, with the seeds that would decide it). Kept with the study;
    `status NAME` shows it; run again, it reuses the finished runs."""
    from service.store.studies import StoreError
    from service.tuning.spec.model import SpecError
    from service.tuning.study.admission import admit, executor_for
    from service.tuning.study.reevaluate import RaceSize, ReevaluationError
    from service.tuning.study.reevaluate import reevaluate as race

    setup_logging(verbose=False)
    home_dir = resolve_home(home)
    database = existing_storage(storage, home_dir)
    spec = _stored_spec(database, name)
    try:
        size = RaceSize(arms=arms, min_seeds=seeds, round_seeds=round_seeds, max_seeds=max_seeds)
        admit(spec, home_dir, database, executor)
        runner = executor_for(spec, executor, ray_address)
    except (SpecError, ReevaluationError) as e:
        raise fail(str(e)) from e
    try:
        with progress_bar() as bar:
            # The total grows by round: runs a decided race will not need are never counted.
            job = bar.add_task("race runs", total=None)

            def show(line: str, done: int, planned: int) -> None:
                bar.update(job, completed=done, total=planned)
                bar.console.log(line)

            race(spec, database, home_dir, runner, size, trial, on_run=show)
    except (StoreError, ReevaluationError) as e:
        raise fail(str(e)) from e
    render.print_reevaluation(LocalSource(database).study(name).reevaluation)


def status(
    name: Annotated[
        str | None, typer.Argument(help="One study's trials; all studies if omitted.")
    ] = None,
    storage: StorageOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    home: HomeOption = None,
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """The studies in the store (or one study's trials); with --url, those of a service."""
    source = study_source(url, token, storage, home, must_exist=name is not None)
    try:
        if name is None:
            page = source.studies()
            if as_json:
                typer.echo(page.model_dump_json(indent=2))
            else:
                render.print_studies(page, source.where)
            return
        study, trials = source.study(name), source.trials(name)
    except SourceError as e:
        raise fail(str(e)) from e
    if as_json:
        shown = {**study.model_dump(mode="json"), "trials": trials.model_dump(mode="json")["data"]}
        typer.echo(json.dumps(shown, indent=2))
    else:
        render.print_study(study, trials)


def cancel(
    name: Annotated[str, typer.Argument(help="The study to stop.")],
    storage: StorageOption = None,
    home: HomeOption = None,
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """Stop a study: its coordinator ends the running trials and marks it cancelled."""
    source = study_source(url, token, storage, home)
    try:
        now = source.cancel(name)
    except SourceError as e:
        raise fail(str(e)) from e
    console.print(f"{name}: {now}")


def schema() -> None:
    """Print the study spec's JSON schema."""
    from service.tuning.spec.model import json_schema

    typer.echo(json.dumps(json_schema(), indent=2))


def submit(
    spec_file: Annotated[Path, typer.Argument(help="Study spec, YAML or JSON.")],
    url: Annotated[str, typer.Option("--url", help="The service, e.g. http://127.0.0.1:8000.")],
    token: TokenOption = None,
    owner: OwnerOption = None,
) -> None:
    """Queue a study on a running service; its coordinator runs it."""
    import yaml

    from service.remote import RemoteError, ServiceClient

    try:
        data = yaml.safe_load(spec_file.read_text(encoding="utf-8"))
    except OSError as e:
        raise fail(f"cannot read the spec {str(spec_file)!r}: {e.strerror}") from e
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise fail(f"{spec_file}: not valid YAML/JSON: {e}") from e
    # The service validates: it names every problem, and checks what a local run cannot
    # (its allowed folders and limits).
    try:
        with ServiceClient(url, token) as client:
            study = client.submit(data, owner or default_owner())
    except RemoteError as e:
        raise fail(str(e)) from e
    console.print(
        f"study [bold]{study['name']}[/bold] {study['status']} at {safe_url(url)}: "
        f"`shapetune status {study['name']} --url {safe_url(url)}` follows it"
    )


def export(
    name: Annotated[str, typer.Argument(help="The study whose shape to export.")],
    out: Annotated[Path, typer.Argument(help="A new (or empty) folder to write.")],
    to: Annotated[str, typer.Option("--to", help="The trainer: verl.")] = "verl",
    trial: Annotated[
        int | None, typer.Option("--trial", help="This trial's shape; default: the best.")
    ] = None,
    estimator: Annotated[
        str, typer.Option("--estimator", help="verl's advantage estimator (gae: PPO).")
    ] = "gae",
    copy_rm: Annotated[
        bool, typer.Option("--copy-rm", help="Copy the reward model into OUT.")
    ] = False,
    storage: StorageOption = None,
    home: HomeOption = None,
) -> None:
    """Write a study's shape (its best trial, or --trial) as a reward manager for another
    trainer's PPO: for verl, a module, its config and a README in OUT."""
    from service.export import (
        TARGETS,
        ExportError,
        check_out,
        export_verl,
        portable_shape,
        shape_explainer,
    )
    from trainers.portable_shape import ShapeFileError

    if to not in TARGETS:
        raise fail(f"--to {to!r}: shapetune exports to {', '.join(TARGETS)}")
    home_dir = resolve_home(home)
    database = existing_storage(storage, home_dir)
    spec = _stored_spec(database, name)
    source = LocalSource(database)
    try:
        study, trials = source.study(name), source.trials(name)
    except SourceError as e:
        raise fail(str(e)) from e
    number = trial if trial is not None else (study.best.trial if study.best else None)
    if number is None:
        raise fail(f"study {name!r} has no completed trial yet: nothing to export")
    chosen = next((t for t in trials.data if t.number == number), None)
    if chosen is None or chosen.state != "COMPLETE" or chosen.weights is None:
        raise fail(f"study {name!r} has no completed trial {number}; `shapetune status {name}`")
    race = study.reevaluation
    verdict = race.verdict if race and any(arm.trial == number for arm in race.arms) else ""
    try:
        check_out(out)
        shape = portable_shape(spec, number, chosen.weights, chosen.knobs, home_dir, verdict)
        explainer = shape_explainer(spec, chosen.weights, chosen.knobs, home_dir)
        written = export_verl(shape, out, estimator, copy_rm, explainer)
    except (ExportError, ShapeFileError, OSError) as e:
        raise fail(str(e)) from e
    shown = sorted({p.parts[0] for p in written})
    console.print(f"trial {number} of {name!r} exported to {out}: {', '.join(shown)}")


def _stored_spec(database: str, name: str) -> Any:
    """A study's spec as its store keeps it, checked again (it may be from another version)."""
    from service.store.studies import StoreError, get_study
    from service.tuning.spec.model import SpecError, parse_spec

    try:
        return parse_spec(get_study(database, name).spec)
    except StoreError as e:
        raise fail(str(e)) from e
    except SpecError as e:
        raise fail(f"study {name!r} cannot run as stored: {e}") from e


def _build_explainer(spec: Any, home: Path) -> None:
    """The reward model's explainer, which every `amortized` run of the study starts from."""
    from trainers.explainer import explainers_root
    from trainers.tasks import make_task

    config = spec.base
    task = make_task(config.task.name, home, **config.task.options)  # admission built it
    length = config.ppo.response_length or task.response_length
    build_explainer(task, length, explainers_root(home))


def _drive(
    spec: Any,
    storage: str | None,
    executor: str | None,
    ray_address: str | None,
    home: Path,
    new: bool,
) -> None:
    """Admit the spec (task, inner runs, executor: nothing written before it passes), then
    create or take over the study and drive it to its budget."""
    from service.store.models import StudyStatus
    from service.store.studies import StoreError, StudyExists, get_study
    from service.tuning.spec.model import SpecError, same_study
    from service.tuning.study.admission import admit, executor_for
    from service.tuning.study.loop import StudyBusy, run_study

    setup_logging(verbose=False)
    database = resolve_storage(storage, home)
    try:
        admit(spec, home, database, executor)
        runner = executor_for(spec, executor, ray_address)
    except SpecError as e:
        raise fail(str(e)) from e
    try:
        existing = _get_study_or_none(database, spec.name) if new else None
        if existing is not None and not same_study(existing.spec, spec):
            raise StudyExists(
                f"a study named {spec.name!r} with another spec exists in {safe_url(database)}; "
                f"`shapetune resume {spec.name}` continues it, or give the spec another name"
            )
    except StoreError as e:
        runner.shutdown()
        raise fail(str(e)) from e
    if existing is not None:
        console.print(f"study {spec.name!r} exists with this spec: continuing it")
    console.print(
        f"study [bold]{spec.name}[/bold]: {spec.budget} trials x {spec.seeds} seeds, "
        f"{runner.slots} inner run(s) at once, store {safe_url(database)}"
    )
    if "amortized" in spec.methods:  # built here once, with its bars, not by a worker
        try:
            _build_explainer(spec, home)
        except typer.Exit:
            runner.shutdown()
            raise
    started = time.monotonic()
    with progress_bar() as bar:
        job = bar.add_task("trials", total=spec.budget)

        def show(p: Any) -> None:
            description = f"best {number(p.best)} (sparse {number(p.sparse)})"
            bar.update(job, completed=p.done, description=description)
            bar.console.log(p.last)

        try:
            final = run_study(spec, database, home, runner, on_progress=show, owner=default_owner())
        except (StudyBusy, StoreError) as e:
            raise fail(str(e)) from e
        except KeyboardInterrupt:
            console.print(f"interrupted: `shapetune resume {spec.name}` continues it")
            raise typer.Exit(code=130) from None
    console.print(f"{final.last} in {time.monotonic() - started:.0f} s")
    _print_study(database, spec.name)
    if get_study(database, spec.name).status != StudyStatus.COMPLETED:
        raise typer.Exit(code=1)


def _get_study_or_none(database: str, name: str) -> Any:
    from service.store.studies import StudyNotFound, get_study

    try:
        return get_study(database, name)
    except StudyNotFound:
        return None


def _print_study(database: str, name: str) -> None:
    source = LocalSource(database)
    render.print_study(source.study(name), source.trials(name))
