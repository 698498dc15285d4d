"""`shapetune run | resume | reevaluate | status | cancel | schema`: tuning studies from the
terminal.

With `--url`, `status`, `resume` and `cancel` ask a running `shapetune serve` instead
(`service.cli_remote`, which also holds `submit`)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from service.cli_common import (
    HomeOption,
    TokenOption,
    UrlOption,
    console,
    default_owner,
    fail,
    progress_bar,
    resolve_home,
    setup_logging,
)

StorageOption = Annotated[
    str | None,
    typer.Option("--storage", help="Study database URL (default: SQLite under the home)."),
]
ExecutorOption = Annotated[
    str | None, typer.Option("--executor", help="Override the spec's executor: ray or inline.")
]
RayAddressOption = Annotated[
    str | None,
    typer.Option("--ray-address", help="Join this Ray cluster instead of starting a local one."),
]


def register(app: typer.Typer) -> None:
    from service.cli_remote import submit

    for command in (run, resume, reevaluate, status, cancel, schema, submit):
        app.command()(command)


def run(
    spec_file: Annotated[Path, typer.Argument(help="Study spec, YAML or JSON.")],
    storage: StorageOption = None,
    executor: ExecutorOption = None,
    ray_address: RayAddressOption = None,
    home: HomeOption = None,
) -> None:
    """Run a tuning study in the foreground until its budget of completed trials."""
    from service.tuning.spec import SpecError, load_spec

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
    if url:
        from service.cli_remote import act

        return act(url, token, name, "resume")
    home_dir = resolve_home(home)
    database = existing_url(storage, home_dir)
    _drive(_stored_spec(database, name), database, executor, ray_address, home_dir, new=False)


def reevaluate(
    name: Annotated[str, typer.Argument(help="The study whose incumbent to re-run.")],
    seeds: Annotated[int, typer.Option("--seeds", min=2, help="Fresh seeds per arm.")] = 5,
    trial: Annotated[
        int | None, typer.Option("--trial", help="Re-run this trial instead of the incumbent.")
    ] = None,
    storage: StorageOption = None,
    executor: ExecutorOption = None,
    ray_address: RayAddressOption = None,
    home: HomeOption = None,
) -> None:
    """Re-run the incumbent (best mean over seeds) and the pure-sparse control on fresh
    seeds: an estimate of both, and of their paired difference, free of the luck that
    picked the incumbent. Kept with the study; `status NAME` shows it."""
    from service.store.studies import StoreError
    from service.tuning.admission import admit_executor, check_runnable
    from service.tuning.reevaluate import ReevaluationError
    from service.tuning.reevaluate import reevaluate as run_reevaluation
    from service.tuning.spec import SpecError

    setup_logging(verbose=False)
    home_dir = resolve_home(home)
    database = existing_url(storage, home_dir)
    spec = _stored_spec(database, name)
    try:
        check_runnable(spec, home_dir)
        runner = admit_executor(spec, executor, ray_address)
    except SpecError as e:
        raise fail(str(e)) from e
    try:
        with progress_bar() as bar:
            job = bar.add_task("re-evaluation runs", total=2 * seeds)

            def show(line: str) -> None:
                bar.advance(job)
                bar.console.log(line)

            run_reevaluation(spec, database, home_dir, runner, seeds, trial, on_run=show)
    except (StoreError, ReevaluationError) as e:
        raise fail(str(e)) from e
    _print_reevaluation(database, name)


def _stored_spec(database: str, name: str) -> Any:
    """A study's spec as its store keeps it, checked again (it may be from another version)."""
    from service.store.studies import StoreError, get_study
    from service.tuning.spec import SpecError, parse_spec

    try:
        return parse_spec(get_study(database, name).spec)
    except StoreError as e:
        raise fail(str(e)) from e
    except SpecError as e:
        raise fail(f"study {name!r} cannot run as stored: {e}") from e


def _print_reevaluation(url: str, name: str) -> None:
    from service.tuning.report import reevaluation

    print_reevaluation(reevaluation(url, name))


def print_reevaluation(found: dict[str, Any] | None) -> None:
    """A study's re-evaluation on fresh seeds (`shapetune reevaluate`), if it has one."""
    if found is None:
        return
    table = Table(title=f"re-evaluated on fresh seeds {found['seeds']} ({found['objective']})")
    for column in ("trial", "arm", "weights", "in the study", "fresh seeds"):
        table.add_column(column, justify="right" if column == "trial" else "left")
    for arm in found["arms"]:
        table.add_row(
            str(arm["trial"]),
            arm["label"],
            _weights(arm["weights"]),
            f"{_num(arm['study_value'])} ± {_num(arm['study_stderr'])}",
            f"{_num(arm['mean'])} ± {_num(arm['stderr'])}",
        )
    console.print(table)
    if found["difference"]:
        d = found["difference"]
        console.print(
            f"incumbent - pure sparse, paired by seed: {_num(d['mean'])} ± {_num(d['stderr'])}"
        )


def _url(storage: str | None, home: Path) -> str:
    """The study database: `--storage`, else SQLite under the home; refused (exit 2) if
    this install cannot open it."""
    from service.store.db import default_url
    from service.tuning.admission import check_storage
    from service.tuning.spec import SpecError

    url = storage or default_url(home)
    try:
        check_storage(url)
    except SpecError as e:
        raise fail(str(e)) from e
    return url


def existing_url(storage: str | None, home: Path) -> str:
    """`_url` for commands that read studies: a missing SQLite file is an error, not a new
    empty database."""
    from service.redaction import safe_url
    from service.store.db import sqlite_path

    url = _url(storage, home)
    path = sqlite_path(url)
    if path is not None and not path.is_file():
        raise fail(
            f"no study database at {safe_url(url)}; run a study first (`shapetune run SPEC`), "
            "or give --storage / --home"
        )
    return url


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
    from service.redaction import safe_url
    from service.store.studies import StoreError, StudyExists, get_study
    from service.tuning.admission import admit_executor, check_runnable
    from service.tuning.spec import SpecError, same_study
    from service.tuning.study import StudyBusy, run_study

    setup_logging(verbose=False)
    url = _url(storage, home)
    try:
        check_runnable(spec, home)
        runner = admit_executor(spec, executor, ray_address)
    except SpecError as e:
        raise fail(str(e)) from e
    try:
        existing = get_study_or_none(url, spec.name) if new else None
        if existing is not None and not same_study(existing.spec, spec):
            raise StudyExists(
                f"a study named {spec.name!r} with another spec exists in {safe_url(url)}; "
                f"`shapetune resume {spec.name}` continues it, or give the spec another name"
            )
    except StoreError as e:
        runner.shutdown()
        raise fail(str(e)) from e
    if existing is not None:
        console.print(f"study {spec.name!r} exists with this spec: continuing it")
    console.print(
        f"study [bold]{spec.name}[/bold]: {spec.budget} trials x {spec.seeds} seeds, "
        f"{runner.slots} inner run(s) at once, store {safe_url(url)}"
    )
    started = time.monotonic()
    with progress_bar() as bar:
        job = bar.add_task("trials", total=spec.budget)

        def show(p: Any) -> None:
            best = "-" if p.best is None else f"{p.best:.4f}"
            sparse = "-" if p.sparse is None else f"{p.sparse:.4f}"
            bar.update(job, completed=p.done, description=f"best {best} (sparse {sparse})")
            bar.console.log(p.last)

        try:
            final = run_study(spec, url, home, runner, on_progress=show, owner=default_owner())
        except (StudyBusy, StoreError) as e:
            raise fail(str(e)) from e
        except KeyboardInterrupt:
            console.print(f"interrupted: `shapetune resume {spec.name}` continues it")
            raise typer.Exit(code=130) from None
    console.print(f"{final.last} in {time.monotonic() - started:.0f} s")
    _print_study(url, spec.name)
    status_now = get_study(url, spec.name).status
    if status_now != "completed":
        raise typer.Exit(code=1)


def get_study_or_none(url: str, name: str) -> Any:
    from service.store.studies import StudyNotFound, get_study

    try:
        return get_study(url, name)
    except StudyNotFound:
        return None


def _print_study(url: str, name: str) -> None:
    from service.tuning.report import study_report

    report = study_report(url, name)
    methods = next((list(t["weights"]) for t in report["trials"] if t["weights"]), [])
    table = Table(title=f"{name}: {report['status']}, {report['done']}/{report['budget']} trials")
    # Weights as one "a/b/c" cell under a header naming the methods, so that the table fits
    # a narrow terminal; per-seed values are in `status NAME --json`.
    table.add_column("trial", justify="right")
    table.add_column("arm", no_wrap=True)
    table.add_column("/".join(methods) or "weights", no_wrap=True)
    table.add_column("objective ± s.e.", justify="right", no_wrap=True)
    table.add_column("state", no_wrap=True)
    for t in report["trials"]:
        weights = "/".join(f"{t['weights'][m]:.2f}" for m in methods) if t["weights"] else "-"
        table.add_row(
            str(t["number"]),
            t["label"] or ("best" if t["number"] == report["best_trial"] else ""),
            weights,
            f"{_num(t['value'])} ± {_num(t['stderr'])}",
            t["state"].lower() + (f": {t['failed_for']}" if t["failed_for"] else ""),
        )
    console.print(table)
    if report["best_trial"] is not None:
        best = report["trials_by_number"][report["best_trial"]]
        line = f"best: trial {best['number']} {_weights(best['weights'])} = {_num(best['value'])} ± {_num(best['stderr'])}"
        if report["sparse"] is not None:
            line += f"; pure sparse = {_num(report['sparse']['value'])} ± {_num(report['sparse']['stderr'])}"
        console.print(line)


def _weights(weights: dict[str, float] | None) -> str:
    if not weights:
        return "-"
    return ", ".join(f"{m}={w:.2f}" for m, w in weights.items() if w >= 0.005)


def _num(value: float | None) -> str:
    return (
        "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"
    )


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
    """The studies in the store (or one study's trials)."""
    if url:
        from service.cli_remote import status as remote_status

        return remote_status(url, token, name, as_json)
    from service.redaction import safe_url
    from service.store.db import sqlite_path
    from service.store.studies import StoreError
    from service.tuning.report import studies_overview, study_report

    url = _url(storage, resolve_home(home))
    path = sqlite_path(url)
    if name is None and path is not None and not path.is_file():
        console.print(f"no studies yet: {safe_url(url)} does not exist")
        return
    if name is not None:
        url = existing_url(storage, resolve_home(home))
    try:
        if name:
            if as_json:
                report = study_report(url, name)
                report.pop("trials_by_number")
                typer.echo(json.dumps(report, indent=2, default=str))
            else:
                _print_study(url, name)
                _print_reevaluation(url, name)
            return
        rows = studies_overview(url)
    except StoreError as e:
        raise fail(str(e)) from e
    if as_json:
        typer.echo(json.dumps(rows, indent=2, default=str))
        return
    table = Table(title=f"studies in {safe_url(url)}")
    for column in ("name", "status", "trials", "best", "sparse", "owner", "coordinator"):
        table.add_column(column)
    for r in rows:
        table.add_row(
            r["name"],
            r["status"],
            f"{r['done']}/{r['budget']}",
            _num(r["best"]),
            _num(r["sparse"]),
            r["owner"],
            r["coordinator"],
        )
    console.print(table)


def cancel(
    name: Annotated[str, typer.Argument(help="The study to stop.")],
    storage: StorageOption = None,
    home: HomeOption = None,
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """Stop a study: its coordinator ends the running trials and marks it cancelled."""
    if url:
        from service.cli_remote import act

        return act(url, token, name, "cancel")
    from service.store.studies import StoreError, request_cancel

    try:
        now = request_cancel(existing_url(storage, resolve_home(home)), name)
    except StoreError as e:
        raise fail(str(e)) from e
    console.print(f"{name}: {now}")


def schema() -> None:
    """Print the study spec's JSON schema."""
    from service.tuning.spec import json_schema

    typer.echo(json.dumps(json_schema(), indent=2))
