"""`shapetune serve`: the REST API and the coordinator in one process."""

from __future__ import annotations

import logging
from typing import Annotated, Any

import typer

from service.cli_common import HomeOption, console, fail, setup_logging


def register(app: typer.Typer) -> None:
    app.command()(serve)


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

    from service.api.app import create_app
    from service.redaction import safe_url
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
    from service.redaction import safe_url
    from service.tuning.specfile import shorten

    field = ".".join(map(str, error["loc"]))
    if "token" in field:
        return "a value, not shown"
    value = error["input"]
    return shorten(safe_url(value) if isinstance(value, str) else value)
