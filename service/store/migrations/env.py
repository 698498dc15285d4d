"""Alembic environment of the service's own tables.

Optuna keeps its tables (and its own `alembic_version`) in the same database, so ours
records its revision in `shapetune_alembic_version` and autogenerate looks only at tables
named `shapetune_*`. `service.store.db.migrate` runs this on the connection it hands over;
to write a new revision after changing `service/store/models.py`:

    .venv/bin/python -c "from alembic import command; from service.store.db import \\
        alembic_config; command.revision(alembic_config('sqlite:////tmp/m.db'), \\
        message='what changed', autogenerate=True)"

(on a database already at head: `shapetune status --storage sqlite:////tmp/m.db` makes one).
"""

from __future__ import annotations

from typing import Any

from alembic import context
from sqlalchemy import create_engine

from service.store.db import VERSION_TABLE, include_name
from service.store.models import Base


def _configure(**kwargs: Any) -> None:
    context.configure(
        target_metadata=Base.metadata,
        version_table=VERSION_TABLE,
        include_name=include_name,
        render_as_batch=True,  # SQLite alters a table by copying it; batch mode does that
        **kwargs,
    )


def run() -> None:
    config = context.config
    if context.is_offline_mode():  # `--sql`: print the DDL for a DBA to apply
        _configure(url=config.get_main_option("sqlalchemy.url"), literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(str(config.get_main_option("sqlalchemy.url")))
    with engine.begin() as own:
        _configure(connection=own)
        with context.begin_transaction():
            context.run_migrations()


run()
