"""No password leaves the store (CLI, API, dashboard, logs), and a coordinator that meets a
study it cannot start fails it once, quietly, and goes on to the next."""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.exc import OperationalError
from typer.testing import CliRunner

from service.app import create_app
from service.cli import app as cli_app
from service.redaction import safe_url
from service.settings import Settings
from service.store import studies as store
from service.tuning.study.coordinator import Backoff, Coordinator, CoordinatorConfig
from service.tuning.study.loop import Timing

runner = CliRunner()
PASSWORD = "hunter2-Secret"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql+psycopg://bob:pw@db:5432/x", "postgresql+psycopg://bob:***@db:5432/x"),
        ("postgresql://bob:p@ss@db/x", "postgresql://bob:***@db/x"),  # '@' in the password
        (
            "postgresql://bob@db/x?password=pw&sslmode=require",
            "postgresql://bob@db/x?password=***&sslmode=require",
        ),
        ("sqlite:////tmp/a@b:c.db", "sqlite:////tmp/a@b:c.db"),
        ("http://u:pw@127.0.0.1:8000", "http://u:***@127.0.0.1:8000"),
        ("postgresql://bob@db/x", "postgresql://bob@db/x"),
    ],
)
def test_safe_url(url: str, shown: str) -> None:
    assert safe_url(url) == shown


def test_no_output_holds_the_storage_password(
    pg_databases: Callable[[], str], make_spec: Callable[..., dict[str, Any]], tmp_path: Path
) -> None:
    # The test server trusts every connection: a password is accepted, and must never show.
    url = pg_databases().replace("postgres@", f"postgres:{PASSWORD}@")
    spec = make_spec(methods=["sparse"], budget=1, seeds=1, control_arms=False, storage=url)
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec))
    home = str(tmp_path / "home")
    outputs = [runner.invoke(cli_app, ["run", str(spec_file), "--home", home])]
    assert outputs[0].exit_code == 0, outputs[0].output
    for args in (["status"], ["status", spec["name"]], ["status", spec["name"], "--json"]):
        outputs.append(runner.invoke(cli_app, [*args, "--storage", url, "--home", home]))
    assert all(o.exit_code == 0 for o in outputs), [o.output for o in outputs]
    assert all(PASSWORD not in o.output for o in outputs)
    assert "postgres:***@" in outputs[0].output  # the URL is shown, redacted

    settings = Settings(home=Path(home), storage=url, coordinator=False)
    with TestClient(create_app(settings), base_url="http://127.0.0.1") as client:
        pages = [
            client.get("/api/v1/studies"),
            client.get(f"/api/v1/studies/{spec['name']}"),
            client.get(f"/api/v1/studies/{spec['name']}/trials"),
            client.get(f"/api/v1/studies/{spec['name']}/trials/0"),
            client.get("/"),
            client.get(f"/studies/{spec['name']}"),
            client.get("/api/v1/health"),
        ]
    assert all(p.status_code == 200 for p in pages), [(p.url, p.status_code) for p in pages]
    assert all(PASSWORD not in p.text for p in pages)
    stored = store.get_study(url, spec["name"]).spec
    assert PASSWORD not in json.dumps(stored)


def test_a_study_that_cannot_start_fails_once_and_the_next_runs(
    make_spec: Callable[..., dict[str, Any]],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    # Stored as another version or another machine might have left them: the API would
    # refuse these today, so they go into the store directly.
    broken = {
        "bad-options": make_spec(
            name="bad-options", task={"name": "synthetic", "options": {"n_words": "abc"}}
        ),
        "bad-knob": make_spec(name="bad-knob", knobs={"temperature": {"low": 50, "high": 500}}),
        "not-a-spec": {"name": "not-a-spec", "budget": 1},
    }
    for name, spec in broken.items():
        store.create_study(url, name, spec)
        time.sleep(0.01)  # queued in this order
    good = make_spec(name="good", methods=["sparse"], budget=1, seeds=1, control_arms=False)
    store.create_study(url, "good", good)
    config = CoordinatorConfig(
        url=url, home=tmp_path, timing=Timing(heartbeat=1, grace=3, lease=3), poll_s=0.05
    )
    coordinator = Coordinator(config)
    with caplog.at_level(logging.DEBUG, logger="service.tuning.study.coordinator"):
        coordinator.start()
        deadline = time.monotonic() + 120
        while store.get_study(url, "good").status not in ("completed", "failed"):
            assert time.monotonic() < deadline, "the good study never ran"
            time.sleep(0.2)
        time.sleep(0.5)  # more polls: a failed study must not come back
        coordinator.stop(timeout_s=30)
    assert store.get_study(url, "good").status == "completed"
    for name, words in (
        ("bad-options", "n_words='abc' should be an integer"),
        ("bad-knob", "ppo.temperature=500"),
        ("not-a-spec", "methods: required field is missing"),
    ):
        record = store.get_study(url, name)
        assert record.status == "failed" and words in record.message, (name, record.message)
        mentions = [r for r in caplog.records if name in r.getMessage()]
        assert len(mentions) == 1, [r.getMessage() for r in mentions]  # logged once
    assert sum(len(r.getMessage()) for r in caplog.records) < 20_000
    assert not any(r.exc_info for r in caplog.records if r.levelno >= logging.WARNING)


def test_a_database_blink_is_retried_with_backoff(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls: list[float] = []

    def blinking(url: str) -> list[str]:
        calls.append(time.monotonic())
        if len(calls) <= 3:  # as `session_scope` raises it when the server restarts
            cause = OperationalError("SELECT 1", {}, Exception("server closed the connection"))
            raise store.StoreError("study database: OperationalError") from cause
        return []

    monkeypatch.setattr(store, "claimable_studies", blinking)
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    coordinator = Coordinator(
        CoordinatorConfig(url=url, home=tmp_path, timing=Timing(), poll_s=0.05)
    )
    coordinator.start()
    deadline = time.monotonic() + 10
    while len(calls) < 5:
        assert time.monotonic() < deadline, calls
        time.sleep(0.02)
    coordinator.stop(timeout_s=5)
    gaps = [b - a for a, b in itertools.pairwise(calls)][:3]
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1 and gaps[2] >= 0.2  # doubling while it fails


def test_backoff_doubles_to_a_ceiling_and_resets() -> None:
    b = Backoff(1.0, max_s=5.0)
    assert [b.next() for _ in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    b.reset()
    assert b.next() == 1.0
