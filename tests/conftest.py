"""Shared fixtures. Everything here is offline and builds models from configs in seconds."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from trainers.tasks.imdb.config import PrepareConfig
from trainers.tasks.imdb.prepare import Prepared, prepare

# tests/verl/ runs in verl's own environment (`make test-verl`): its transformers range is
# not ours, so the main environment has no verl to import.
collect_ignore_glob = [] if importlib.util.find_spec("verl") else ["verl/*"]


@pytest.fixture(autouse=True)
def _torch_threads() -> None:
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("shapetune-home")


@pytest.fixture(scope="session")
def tiny_prepared(tiny_home: Path) -> Prepared:
    """The built-in task at the tiny size, built once per test session."""
    return prepare(tiny_home, PrepareConfig(size="tiny"))
