"""`shapetune serve | dashboard`: the service (REST API, pages and coordinator) and
Optuna's own dashboard, each in the foreground until Ctrl+C."""

from __future__ import annotations

import logging
from typing import Annotated, Any

import typer

from service.cli.options import (
    HomeOption,
    StorageOption,
    console,
    existing_storage,
    fail,
    resolve_home,
    setup_logging,
)
from service.redaction import safe_url

DASHBOARD_HOST = "127.0.0.1"
"""optuna-dashboard has no authentication of its own: loopback only."""


def register(app: typer.Typer) -> None:
    for command in (serve, dashboard):
        app.command()(command)


def serve(
    host: Annotated[
        str | None, typer.Option(help="Bind address (default $SHAPETUNE_HOST or 127.0.0.1).")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Port (default $SHAPETUNE_PORT or 8000).")
    ] = None,
    storage: Annotated[
        str | None,
        typer.Option(
            help="Study database URL (default $SHAPETUNE_STORAGE or SQLite under the home)."
        ),
    ] = None,
    executor: Annotated[
        str | None,
        typer.Option(help="Run inner runs with ray or inline, whatever the specs say."),
    ] = None,
    ray_address: Annotated[
        str | None, typer.Option(help="Join this Ray cluster instead of starting a local one.")
    ] = None,
    coordinator: Annotated[
        bool | None,
        typer.Option(
            "--coordinator/--no-coordinator",
            help="Drive queued studies in this process (default $SHAPETUNE_COORDINATOR or on).",
        ),
    ] = None,
    home: HomeOption = None,
) -> None:
    """Serve the REST API (/api/v1, docs at /docs) and drive queued studies, one at a time.

    Settings come from SHAPETUNE_* variables and .env (see `service/settings.py`); options
    here override them. Binding to anything but loopback needs SHAPETUNE_TOKEN.
    """
    import uvicorn
    from pydantic import ValidationError

    from service.app import create_app
    from service.settings import get_settings
    from service.store.db import StoreError, check_url

    given: dict[str, Any] = {
        "host": host,
        "port": port,
        "storage": storage,
        "executor": executor,
        "ray_address": ray_address,
        "coordinator": coordinator,
        "home": home,
    }
    try:
        settings = get_settings(**{k: v for k, v in given.items() if v is not None})
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(map(str, err['loc']))}: {err['msg']} (got {_shown(err)})"
            for err in e.errors()
        )
        raise fail(f"settings: {problems}") from e
    try:
        check_url(settings.storage_url())
    except StoreError as e:
        raise fail(str(e)) from e
    if settings.token is None and not settings.loopback_only():
        raise fail(
            f"refusing to serve on {settings.host} without a token: anyone who can reach it "
            "could run studies. Set SHAPETUNE_TOKEN, or bind to 127.0.0.1"
        )
    if settings.read_token is not None and settings.token is None:
        raise fail("SHAPETUNE_READ_TOKEN needs SHAPETUNE_TOKEN too: otherwise writes are open")
    setup_logging(verbose=True)
    # A service log tells of requests and studies; not of every PPO step or migration check.
    for noisy in ("trainers", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    runs = settings.executor or "each spec's executor"
    console.print(
        f"shapetune API on http://{settings.host}:{settings.port} (docs /docs), "
        f"store {safe_url(settings.storage_url())}, "
        + (f"coordinator on ({runs})" if settings.coordinator else "no coordinator")
        + ("" if settings.token else ", no token (loopback only)")
    )
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info")


def _shown(error: Any) -> str:
    """A refused setting's value as an error may show it: never a token, never a password."""
    from service.tuning.spec.text import shorten

    field = ".".join(map(str, error["loc"]))
    if "token" in field:
        return "a value, not shown"
    value = error["input"]
    return shorten(safe_url(value) if isinstance(value, str) else value)


def dashboard(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.", min=1, max=65535)] = 8080,
    storage: StorageOption = None,
    home: HomeOption = None,
) -> None:
    """Launch optuna-dashboard on the study database, on loopback, until Ctrl+C."""
    # Its standard views (history, importances, slices, contours) need nothing from
    # shapetune; the service's pages (`shapetune serve`) add the shaping views.
    from optuna_dashboard import run_server

    from service.store.db import StoreError
    from service.tuning.optuna_storage import open_storage

    database = existing_storage(storage, resolve_home(home))
    try:
        rdb = open_storage(database)
    except (StoreError, ValueError) as e:
        raise fail(str(e)) from e
    # The URL first, flushed: scripts and tests read it from a pipe.
    typer.echo(f"optuna-dashboard: http://{DASHBOARD_HOST}:{port}/  (Ctrl+C stops it)")
    typer.get_text_stream("stdout").flush()
    try:
        run_server(rdb, host=DASHBOARD_HOST, port=port)
    except OSError as e:  # the port is taken
        raise fail(f"cannot serve on {DASHBOARD_HOST}:{port}: {e}; choose another --port") from e
