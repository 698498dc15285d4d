"""Engines and sessions for the study database (SQLite embedded, PostgreSQL for teams).

Optuna's tables and the service's live in one database, so one URL names a deployment.
The service's tables are brought to the newest Alembic revision when a process first opens
the database.
"""

from __future__ import annotations

import fcntl
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

SQLITE_TIMEOUT_S = 60
"""How long a SQLite writer waits for the lock: workers heartbeat concurrently."""
MIGRATIONS = Path(__file__).parent / "migrations"
VERSION_TABLE = "shapetune_alembic_version"
"""Where our revision is kept: Optuna keeps its own in `alembic_version`."""
BASELINE = "0001"
"""The revision whose tables `create_all` made before there were migrations."""
PG_MIGRATION_LOCK = 0x5348_4150  # any fixed key: every process migrating takes the same one
_migrating = threading.Lock()


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
        migrate(engine)
    except SQLAlchemyError as e:
        raise StoreError(f"cannot open the study database {safe_url(url)}: {e}") from e
    return engine


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """Autogenerate compares our tables only: Optuna migrates its own."""
    return type_ != "table" or bool(name and name.startswith("shapetune_"))


def alembic_config(url: str, connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))  # ini interpolation
    config.attributes["connection"] = connection
    return config


def migrate(engine: Engine) -> None:
    """Upgrade the service's tables to the newest revision, once at a time: processes that
    open a fresh database together (a coordinator and its workers) must not both create."""
    with _migrating, _process_lock(engine), engine.begin() as connection:
        if engine.dialect.name == "postgresql":  # held until this transaction ends
            connection.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_MIGRATION_LOCK}
            )
        config = alembic_config(engine.url.render_as_string(hide_password=False), connection)
        tables = set(inspect(connection).get_table_names())
        if "shapetune_studies" in tables and VERSION_TABLE not in tables:
            command.stamp(config, BASELINE)
        command.upgrade(config, "head")


@contextmanager
def _process_lock(engine: Engine) -> Iterator[None]:
    """SQLite's DDL does not wait on its write lock, so processes take a file lock beside
    the database; PostgreSQL uses an advisory lock in the migrating transaction instead."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        yield
        return
    with open(f"{database}.migrate-lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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
        raise StoreError(f"study database {safe_url(url)}: {e.__class__.__name__}: {e}") from e
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def safe_url(url: str) -> str:
    """The URL without a password."""
    head, at, tail = url.rpartition("@")
    if not at:
        return url
    scheme, _, creds = head.partition("://")
    return f"{scheme}://{creds.split(':')[0]}@{tail}"


def ping(url: str) -> None:
    """Raise `StoreError` unless the database answers."""
    with session_scope(url) as s:
        s.execute(text("SELECT 1"))
