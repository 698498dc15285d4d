"""Engines and sessions for the study database (SQLite embedded, PostgreSQL for teams).

Optuna's tables and the service's live in one database, so one URL names a deployment.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from service.store.models import Base

SQLITE_TIMEOUT_S = 60
"""How long a SQLite writer waits for the lock: workers heartbeat concurrently."""


class StoreError(RuntimeError):
    """The study database failed; the message names the database and the cause."""


def default_url(home: Path) -> str:
    return f"sqlite:///{home / 'studies.db'}"


def engine_kwargs(url: str) -> dict[str, Any]:
    """Also handed to Optuna's RDBStorage, so both see the database alike."""
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
    return {"pool_pre_ping": True}


def prepare_sqlite(url: str) -> None:
    """Create the folder, and switch the file to WAL once (it persists): readers then never
    block the writer, which is what concurrent workers and a dashboard need."""
    path = Path(url.removeprefix("sqlite:///"))
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path, timeout=SQLITE_TIMEOUT_S) as connection:
        connection.execute("PRAGMA journal_mode=WAL")


@cache
def get_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        prepare_sqlite(url)
    engine = create_engine(url, **engine_kwargs(url))
    if url.startswith("sqlite"):

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _: Any) -> None:
            dbapi_connection.execute("PRAGMA foreign_keys=ON")

    try:
        Base.metadata.create_all(engine)
    except SQLAlchemyError as e:
        raise StoreError(f"cannot open the study database {_safe(url)}: {e}") from e
    return engine


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """One transaction: committed on success, rolled back on error; database errors come
    out as `StoreError` naming the database."""
    session = sessionmaker(get_engine(url), expire_on_commit=False)()
    try:
        yield session
        session.commit()
    except SQLAlchemyError as e:
        session.rollback()
        raise StoreError(f"study database {_safe(url)}: {e.__class__.__name__}: {e}") from e
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def _safe(url: str) -> str:
    """The URL without a password."""
    head, at, tail = url.rpartition("@")
    if not at:
        return url
    scheme, _, creds = head.partition("://")
    return f"{scheme}://{creds.split(':')[0]}@{tail}"
