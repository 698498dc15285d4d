"""`shapetune dashboard`: Optuna's own dashboard (optuna-dashboard) over the study database.

Its standard views (history, importances, slices, contours) need nothing from shapetune;
the service's pages (`shapetune serve`) add the shaping views. Loopback only: it has no
authentication of its own.
"""

from __future__ import annotations

from typing import Annotated

import typer

from service.cli_common import HomeOption, fail, resolve_home
from service.cli_study import StorageOption

HOST = "127.0.0.1"


def register(app: typer.Typer) -> None:
    app.command()(dashboard)


def dashboard(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.", min=1, max=65535)] = 8080,
    storage: StorageOption = None,
    home: HomeOption = None,
) -> None:
    """Launch optuna-dashboard on the study database, on loopback, until Ctrl+C."""
    from optuna_dashboard import run_server

    from service.cli_study import existing_url
    from service.store.db import StoreError
    from service.tuning.storage import open_storage

    url = existing_url(storage, resolve_home(home))
    try:
        rdb = open_storage(url)
    except (StoreError, ValueError) as e:
        raise fail(str(e)) from e
    # The URL first, flushed: scripts and tests read it from a pipe.
    typer.echo(f"optuna-dashboard: http://{HOST}:{port}/  (Ctrl+C stops it)")
    typer.get_text_stream("stdout").flush()
    try:
        run_server(rdb, host=HOST, port=port)
    except OSError as e:  # the port is taken
        raise fail(f"cannot serve on {HOST}:{port}: {e}; choose another --port") from e
