"""The service's tables come from Alembic migrations, on SQLite and PostgreSQL, beside
Optuna's: fresh databases, databases made before migrations, processes racing to migrate."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from service.store.db import VERSION_TABLE, alembic_config, get_engine, include_name
from service.store.models import Base
from service.store.studies import create_study, get_study
from service.tuning.optuna_storage import open_storage

HEAD = "0003"


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'studies.db'}"
    url: str = request.getfixturevalue("pg_databases")()
    return url


def revision(url: str) -> str:
    with create_engine(url).connect() as c:
        return str(c.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar_one())


def test_a_fresh_database_is_migrated_and_matches_the_models(fresh_url: str) -> None:
    open_storage(fresh_url)  # ours first, then Optuna's tables beside them
    engine = get_engine(fresh_url)
    tables = set(inspect(engine).get_table_names())
    assert {"shapetune_studies", "shapetune_leases", "trials", "alembic_version"} <= tables
    assert revision(fresh_url) == HEAD
    with engine.connect() as connection:
        opts = {"include_name": include_name, "version_table": VERSION_TABLE}  # as env.py has
        context = MigrationContext.configure(connection, opts=opts)
        assert compare_metadata(context, Base.metadata) == []  # Optuna's tables ignored


def test_migrations_go_down_and_up_again(fresh_url: str) -> None:
    get_engine(fresh_url)
    create_study(fresh_url, "kept", {"budget": 1})
    config = alembic_config(fresh_url)
    command.downgrade(config, "0001")
    assert "ix_shapetune_studies_status" not in {
        i["name"] for i in inspect(create_engine(fresh_url)).get_indexes("shapetune_studies")
    }
    command.upgrade(config, "head")
    assert revision(fresh_url) == HEAD and get_study(fresh_url, "kept").spec == {"budget": 1}


def test_a_database_made_before_migrations_is_stamped_and_upgraded(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    old = create_engine(url)
    with old.begin() as c:  # what `create_all` made: the tables of revision 0001, no version
        c.execute(
            text(
                "CREATE TABLE shapetune_studies (name VARCHAR(64) PRIMARY KEY, spec JSON NOT NULL,"
                " status VARCHAR(16) NOT NULL, owner VARCHAR(128) NOT NULL, message TEXT NOT NULL,"
                " created_at DATETIME NOT NULL, updated_at DATETIME NOT NULL)"
            )
        )
        c.execute(
            text(
                "CREATE TABLE shapetune_leases (study_name VARCHAR(64) PRIMARY KEY,"
                " holder VARCHAR(128) NOT NULL, expires_at DATETIME NOT NULL)"
            )
        )
        c.execute(
            text(
                "INSERT INTO shapetune_studies VALUES ('old', '{\"budget\": 2}', 'completed',"
                " '', '', :t, :t)"
            ),
            {"t": datetime(2026, 1, 1)},
        )
    old.dispose()
    get_engine(url)
    assert revision(url) == HEAD
    assert get_study(url, "old").status == "completed"
    indexes = {i["name"] for i in inspect(create_engine(url)).get_indexes("shapetune_studies")}
    assert {"ix_shapetune_studies_status", "ix_shapetune_studies_created_at"} <= indexes


def test_processes_opening_a_fresh_database_together_migrate_it_once(fresh_url: str) -> None:
    opener = f"from service.store.db import get_engine; get_engine({fresh_url!r})"
    processes = [
        subprocess.Popen([sys.executable, "-c", opener], stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    errors = [p.communicate(timeout=120)[1] for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0], errors
    assert revision(fresh_url) == HEAD
