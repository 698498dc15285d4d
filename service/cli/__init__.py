"""The `shapetune` command line.

One module per group of commands, each adding its commands to `app` in `register(app)`:
`tasks` (prepare, explain, train, tasks list/show), `studies` (run, resume, reevaluate,
status, cancel, schema, submit), `serving` (serve, dashboard). They share `options` (option
types, the console, the home and the study database, failing, logging, the progress bar),
read studies through `sources` (the store or a running service, the same schemas) and print
through `render`. Commands import what is heavy inside themselves, so that
`shapetune --help` and the `--url` commands start fast.
"""

from __future__ import annotations

import typer

from service.cli import serving, studies, tasks
from service.cli.options import console

app = typer.Typer(
    help="Tune dense reward shaping for RLHF.", no_args_is_help=True, add_completion=False
)
for commands in (tasks, studies, serving):
    commands.register(app)


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
