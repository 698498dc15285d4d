"""Engines and sessions for the study database (SQLite embedded, PostgreSQL for teams).

Optuna's tables and the service's live in one database, so one URL names a deployment.
The service's tables are brought to the newest Alembic revision when a process first opens
the database.
"""

from __future__ import annotations

import fcntl
import os
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
from sqlalchemy.engine import make_url
from sqlalchemy.exc import (
    ArgumentError,
    DisconnectionError,
    NoSuchModuleError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

from service.redaction import safe_url

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


TRANSIENT = (OperationalError, DisconnectionError, PoolTimeout, ConnectionError)
"""Errors of the connection rather than the query: a restart or a network blink passes."""


def is_transient(e: BaseException) -> bool:
    """Whether `e`, or the database error a `StoreError` wraps, can pass if tried again."""
    return isinstance(e, TRANSIENT) or (
        isinstance(e, StoreError) and isinstance(e.__cause__, TRANSIENT)
    )


BACKENDS = ("sqlite", "postgresql")
URL_HELP = "use sqlite:///PATH or postgresql+psycopg://USER@HOST/DB"


def default_url(home: Path) -> str:
    return f"sqlite:///{home / 'studies.db'}"


def sqlite_path(url: str) -> Path | None:
    """The file of an SQLite URL; None for any other database."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    return Path(parsed.database).expanduser()


def check_url(url: str) -> None:
    """Raise `StoreError` unless `url` names a database this install can open (its dialect
    and driver installed, an SQLite file's folder creatable), touching nothing."""
    shown = safe_url(url)
    try:
        parsed = make_url(url)
        dialect = parsed.get_dialect()
    except (ArgumentError, ValueError):
        raise StoreError(f"storage {shown!r} is not a database URL; {URL_HELP}") from None
    except NoSuchModuleError:
        raise StoreError(f"storage {shown!r}: no such database dialect; {URL_HELP}") from None
    if parsed.get_backend_name() not in BACKENDS:
        raise StoreError(
            f"storage {shown!r}: {parsed.get_backend_name()} is not supported; {URL_HELP}"
        )
    try:
        dialect.import_dbapi()
    except ImportError as e:
        raise StoreError(
            f"storage {shown!r}: its driver ({e.name or e}) is not installed; "
            "use postgresql+psycopg:// (psycopg 3: `pip install 'shapetune[postgres]'`)"
        ) from None
    if parsed.get_backend_name() == "sqlite":
        _check_sqlite_path(parsed.database, shown)


def _check_sqlite_path(database: str | None, shown: str) -> None:
    if not database or database == ":memory:" or database.startswith("file:"):
        raise StoreError(
            f"storage {shown!r}: give a file (sqlite:///PATH); a study must outlive the process"
        )
    path = Path(database).expanduser()
    if path.exists():
        if not path.is_file():
            raise StoreError(f"storage {shown!r}: {str(path)!r} is not a file")
        if not os.access(path, os.R_OK | os.W_OK):
            raise StoreError(f"storage {shown!r}: {str(path)!r} is not readable and writable")
        return
    folder = path.parent  # the first folder that exists must be one we may create inside
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise StoreError(
            f"storage {shown!r}: cannot create {str(path)!r} ({str(folder)!r} is not a "
            "writable folder); give a path in a folder you can write"
        )


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
    # Changing the journal mode fails at once, without the busy timeout, while another
    # process holds the file: processes opening a fresh database together take turns.
    with _file_lock(path), sqlite3.connect(path, timeout=SQLITE_TIMEOUT_S) as connection:
        connection.execute("PRAGMA journal_mode=WAL")


@cache
def get_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        try:
            prepare_sqlite(url)
        except (OSError, sqlite3.Error) as e:
            raise StoreError(f"cannot open the study database {safe_url(url)}: {e}") from e
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
    with _file_lock(Path(database)):
        yield


@contextmanager
def _file_lock(database: Path) -> Iterator[None]:
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


def ping(url: str) -> None:
    """Raise `StoreError` unless the database answers."""
    with session_scope(url) as s:
        s.execute(text("SELECT 1"))
