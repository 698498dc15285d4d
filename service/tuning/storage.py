"""Optuna's RDB storage over the study database, with heartbeats and retries configured."""

from __future__ import annotations

import warnings

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
