"""Optuna's RDB storage over the study database, with heartbeats and retries configured."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

from service.store.db import engine_kwargs, get_engine

MAX_RETRIES = 3
"""Times a trial whose inner runs stopped heartbeating is re-queued with its parameters."""

# Heartbeats outside Study.optimize are what ask-and-tell needs; Optuna marks them
# experimental and warns on every ask.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")


def open_storage(url: str, heartbeat_s: float = 10.0, grace_s: float = 60.0) -> RDBStorage:
    get_engine(url)  # creates the folder, WAL mode and the service's tables
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return RDBStorage(
        url,
        engine_kwargs=engine_kwargs(url),
        heartbeat_interval=max(1, round(heartbeat_s)),
        grace_period=max(2, round(grace_s)),
        heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES),
    )


@contextmanager
def opened_storage(
    url: str, heartbeat_s: float = 10.0, grace_s: float = 60.0
) -> Iterator[RDBStorage]:
    """`open_storage` for one piece of work, its connections closed at the end. Each
    RDBStorage has a pool of its own; left to the garbage collector, those of finished runs
    pile up in long-lived Ray workers until PostgreSQL refuses new clients (100 by
    default)."""
    storage = open_storage(url, heartbeat_s, grace_s)
    try:
        yield storage
    finally:
        storage.engine.dispose()


def create_tables(url: str) -> None:
    """The service's and Optuna's tables, created or migrated, with nothing left open."""
    with opened_storage(url):
        pass
