"""What every `shapetune` command shares: the option types, the console, the home folder
and the study database, failing cleanly, logging and the progress bar."""

from __future__ import annotations

import getpass
import logging
import os
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from service.auth import OWNER_CHARS
from service.redaction import safe_url
from service.settings import get_settings

# Out of a terminal (`make demo > log`) rich assumes 80 columns and cuts tables: be wide.
console = Console(width=None if Console().is_terminal else int(os.environ.get("COLUMNS", 160)))

HomeOption = Annotated[
    Path | None,
    typer.Option("--home", help="Cache folder (default: $SHAPETUNE_HOME or ~/.shapetune)."),
]
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
TaskOption = Annotated[
    list[str] | None, typer.Option("--option", "-o", help="KEY=VALUE task option.")
]

UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url", help="A running `shapetune serve`, e.g. http://127.0.0.1:8000 (default: local)."
    ),
]
TokenOption = Annotated[
    str | None,
    typer.Option("--token", envvar="SHAPETUNE_TOKEN", help="The service's bearer token."),
]
OwnerOption = Annotated[
    str | None,
    typer.Option(
        "--owner", envvar="SHAPETUNE_OWNER", help="Who the study is for (default: user@host)."
    ),
]


def default_owner() -> str:
    """user@host, in the characters an owner may hold (`service.auth.OWNER_PATTERN`)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no user name in the environment or the password file
        user = "unknown"
    return re.sub(rf"[^{OWNER_CHARS}]", "_", f"{user}@{socket.gethostname()}")[:128]


def resolve_home(home: Path | None) -> Path:
    return home.expanduser().resolve() if home else get_settings().resolved_home()


def resolve_storage(storage: str | None, home: Path) -> str:
    """The study database: `--storage`, else SQLite under the home; refused (exit 2) if
    this install cannot open it."""
    from service.store.db import StoreError, check_url, default_url

    database = storage or default_url(home)
    try:
        check_url(database)
    except StoreError as e:
        raise fail(str(e)) from e
    return database


def existing_storage(storage: str | None, home: Path) -> str:
    """`resolve_storage` for commands that read studies: a missing SQLite file is an error,
    not a new empty database."""
    from service.store.db import sqlite_path

    database = resolve_storage(storage, home)
    path = sqlite_path(database)
    if path is not None and not path.is_file():
        raise fail(
            f"no study database at {safe_url(database)}; run a study first (`shapetune run SPEC`), "
            "or give --storage / --home"
        )
    return database


def fail(message: str) -> typer.Exit:
    """Print the problem and return the exit to raise (code 2: bad input)."""
    console.print(f"[red]error:[/red] {message}")
    return typer.Exit(code=2)


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def progress_bar() -> Progress | LogProgress:
    """A bar with a description, done/total, time spent and time left: PPO steps, study
    trials, the stages of `prepare`. Out of a terminal, where a bar shows nothing, lines."""
    if not console.is_terminal:
        return LogProgress()
    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )


class LogProgress:
    """`progress_bar` for a log: a line when a task starts, when its description changes,
    when it finishes, and every `PERIOD` seconds while it runs. The part of rich's
    `Progress` the commands use (`add_task`, `update`, `console.log`)."""

    PERIOD = 30.0

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.console = console
        self.clock = clock
        self._tasks: dict[TaskID, dict[str, Any]] = {}

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def add_task(self, description: str, total: float | None = None) -> TaskID:
        task, now = TaskID(len(self._tasks)), self.clock()
        self._tasks[task] = {"description": description, "total": total, "done": 0.0}
        self._tasks[task] |= {"started": now, "finished": False}
        self._line(task, "started", now)
        return task

    def update(
        self,
        task: TaskID,
        completed: float | None = None,
        total: float | None = None,
        description: str | None = None,
    ) -> None:
        state, now = self._tasks[task], self.clock()
        changed = description is not None and description != state["description"]
        for key, value in (("done", completed), ("total", total), ("description", description)):
            if value is not None:
                state[key] = value
        finished = state["total"] is not None and state["done"] >= state["total"]
        if finished and not state["finished"]:
            state["finished"] = True
            self._line(task, "done", now)
        elif changed or now - state["shown"] >= self.PERIOD:
            self._line(task, "", now)

    def _line(self, task: TaskID, event: str, now: float) -> None:
        state = self._tasks[task]
        state["shown"] = now
        total = "?" if state["total"] is None else f"{state['total']:g}"
        elapsed = now - state["started"]
        words = [state["description"], f"{state['done']:g}/{total}", f"{elapsed:.0f} s", event]
        self.console.print(" | ".join(w for w in words if w), markup=False, highlight=False)


def stage_rows(bar: Progress | LogProgress) -> Callable[..., None]:
    """One row of `bar` per stage of a build (`prepare`'s, the explainer's), added when the
    stage is first reported: an `on_progress` for `trainers.tasks.imdb.prepare.prepare` and
    `trainers.explainer.ensure_explainer`."""
    rows: dict[str, TaskID] = {}

    def show(stage: str, done: int, total: int, *, cached: bool = False) -> None:
        if stage not in rows:
            if not cached:  # a build has loaded transformers, whose own bars would break ours
                quiet_transformers()
            rows[stage] = bar.add_task(f"{stage} (cached)" if cached else stage, total=total)
        bar.update(rows[stage], completed=done, total=total)

    return show


def build_explainer(task: Any, length: int, explainers: Path) -> None:
    """`task`'s reward-model explainer for `length`-token responses, built (or found) under
    `explainers` with its own bars before the runs that start from it; exit 2 naming the
    problem when it cannot be."""
    from shaping.reward_model import NoStatesError
    from trainers.explainer import ensure_explainer

    try:
        with progress_bar() as bar:
            ensure_explainer(task, length, explainers, on_progress=stage_rows(bar))
    except (ValueError, NoStatesError, OSError) as e:
        raise fail(
            f"the reward model's explainer could not be built (amortized starts from it): {e}"
        ) from e


def quiet_transformers() -> None:
    """No weight-loading bars, and no padding warning for generate's finished rows (the
    trainer masks everything after a response's EOS itself)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
