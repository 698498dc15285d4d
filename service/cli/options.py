"""What every `shapetune` command shares: the option types, the console, the home folder
and the study database, failing cleanly, logging and the progress bar."""

from __future__ import annotations

import getpass
import logging
import re
import socket
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from service.auth import OWNER_CHARS
from service.settings import get_settings

console = Console()

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
    from service.store.db import default_url
    from service.tuning.admission import check_storage
    from service.tuning.spec import SpecError

    database = storage or default_url(home)
    try:
        check_storage(database)
    except SpecError as e:
        raise fail(str(e)) from e
    return database


def existing_storage(storage: str | None, home: Path) -> str:
    """`resolve_storage` for commands that read studies: a missing SQLite file is an error,
    not a new empty database."""
    from service.redaction import safe_url
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


def progress_bar() -> Progress:
    """A bar with a description, done/total, time spent and time left: PPO steps, study
    trials, the stages of `prepare`."""
    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )
