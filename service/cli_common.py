"""What every `shapetune` command shares: the console, the home folder, failing cleanly."""

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
