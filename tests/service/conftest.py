"""Fixtures of the tuning-service tests: study databases on both backends (SQLite and the
live PostgreSQL), one local Ray cluster per session, and tiny synthetic study specs."""

from __future__ import annotations

import os
import shutil
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest

PG_SERVER = "postgres@127.0.0.1:5432"
TINY_INNER: dict[str, Any] = {
    "steps": 4,
    "eval_interval": 2,
    "eval_prompts": 8,
    "ppo": {"rollout_batch": 8, "minibatch": 4, "epochs": 1},
}
"""An inner run of about half a second on one CPU thread."""


NewDatabase = Callable[[], str]


@pytest.fixture(scope="session")
def pg_databases() -> Iterator[NewDatabase]:
    """Makes throwaway PostgreSQL databases, all dropped when the session ends.
    Unreachable: a failure under CI (the server is part of the test machine), a skip
    elsewhere."""
    import psycopg

    try:
        admin = psycopg.connect(
            f"postgresql://{PG_SERVER}/postgres", connect_timeout=5, autocommit=True
        )
    except psycopg.OperationalError as e:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL at {PG_SERVER} is unreachable under CI: {e}")
        pytest.skip(f"PostgreSQL at {PG_SERVER} is unreachable: {e}")
    made: list[str] = []

    def new() -> str:
        made.append(f"shapetune_test_{uuid.uuid4().hex[:10]}")
        admin.execute(f'CREATE DATABASE "{made[-1]}"')
        return f"postgresql+psycopg://{PG_SERVER}/{made[-1]}"

    try:
        yield new
    finally:
        from service.store.db import get_engine

        get_engine.cache_clear()
        for db in made:
            admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        admin.close()


@pytest.fixture(scope="session")
def pg_url(pg_databases: NewDatabase) -> str:
    """One PostgreSQL database shared by this session's tests (they use unique names)."""
    return pg_databases()


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The study database on each backend in turn (tests use unique study names): for tests
    whose subject is what the store does (processes writing together, leases, crashes, the
    study loop's own reads and writes). A test of anything else takes `sqlite_url`."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'db' / 'studies.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """The study database where the backend is not what is tested: SQLite, embedded."""
    return f"sqlite:///{tmp_path / 'db' / 'studies.db'}"


@pytest.fixture
def study_name() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def tiny_spec(name: str, **fields: Any) -> dict[str, Any]:
    """A tiny valid spec on the synthetic task, as plain data; keywords override fields."""
    return {
        "name": name,
        "task": {"name": "synthetic"},
        "methods": ["sparse", "uniform", "red"],
        "inner": TINY_INNER,
        "seeds": 2,
        "budget": 4,
        "sampler": "random",
        "executor": "inline",
        **fields,
    }


@pytest.fixture
def make_spec(study_name: str) -> Callable[..., dict[str, Any]]:
    """`tiny_spec` named for the test."""

    def make(**fields: Any) -> dict[str, Any]:
        return tiny_spec(**{"name": study_name, **fields})

    return make


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """One local Ray cluster for the session: 2 CPUs on loopback only, no dashboard."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray

    ray.init(
        address="local",  # a cluster of its own, never one another process left running
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def shapetune_bin() -> str:
    """The console script of the venv running the tests."""
    found = Path(sys.executable).parent / "shapetune"
    return str(found) if found.exists() else shutil.which("shapetune") or "shapetune"


def pytest_configure(config: pytest.Config) -> None:
    # Heartbeats outside Study.optimize are what the coordinator needs; Optuna warns on each.
    config.addinivalue_line("filterwarnings", "ignore::optuna.exceptions.ExperimentalWarning")
    config.addinivalue_line("filterwarnings", "ignore:Heartbeat of storage is supposed to be used")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def free_port() -> Callable[[], int]:
    """A port nothing listens on, on loopback."""
    return _free_port


@contextmanager
def _serving(app: Any) -> Iterator[str]:
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start in 30 s"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="session")
def serving() -> Callable[[Any], AbstractContextManager[str]]:
    """`with serving(app) as base:` the ASGI app served by uvicorn on a free loopback port,
    in a thread, at `base` (http://127.0.0.1:PORT)."""
    return _serving
