"""The study database is an ordinary Optuna database: Optuna's CLI and optuna-dashboard
read it, on SQLite and PostgreSQL."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from wsgiref.util import setup_testing_defaults

import pytest

from service.executor import InlineExecutor
from service.tuning.spec.model import parse_spec
from service.tuning.study.loop import Timing, run_study

FAST = Timing(heartbeat=1, grace=3, lease=4, poll=0.2)


@pytest.fixture
def finished_study(
    storage_url: str, tmp_path: Path, make_spec: Callable[..., dict[str, Any]]
) -> tuple[str, str]:
    """A completed study of 3 trials, one seed each (so no standard error: NaN)."""
    spec = parse_spec(make_spec(budget=3, seeds=1))
    run_study(spec, storage_url, tmp_path, InlineExecutor(), timing=FAST)
    return storage_url, spec.name


def _strict_json(text: str) -> Any:
    """JSON as a browser parses it: NaN and Infinity are not JSON."""

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_optuna_cli_lists_the_trials(finished_study: tuple[str, str]) -> None:
    url, name = finished_study
    optuna_cli = Path(sys.executable).parent / "optuna"
    listed = subprocess.run(
        [str(optuna_cli), "trials", "--study-name", name, "--storage", url, "-f", "json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [r["number"] for r in rows] == [0, 1, 2]
    assert {r["state"] for r in rows} == {"COMPLETE"}
    assert all(isinstance(r["value"], float) for r in rows)
    assert set(rows[0]["params"]) == {"u0", "u1"}


def _get(app: Any, path: str) -> tuple[str, str]:
    environ: dict[str, Any] = {"PATH_INFO": path, "REQUEST_METHOD": "GET"}
    setup_testing_defaults(environ)
    environ["wsgi.errors"] = io.StringIO()
    status: list[str] = []
    body = b"".join(app(environ, lambda s, headers, exc_info=None: status.append(s)))
    return status[0], body.decode()


def test_optuna_dashboard_loads_the_study(finished_study: tuple[str, str]) -> None:
    import optuna_dashboard

    url, name = finished_study
    app = optuna_dashboard.wsgi(url)
    status, body = _get(app, "/api/studies")
    assert status.startswith("200"), body
    studies = {s["study_name"]: s for s in _strict_json(body)["study_summaries"]}
    assert name in studies
    status, body = _get(app, f"/api/studies/{studies[name]['study_id']}")
    assert status.startswith("200"), body
    detail = _strict_json(body)
    assert [t["state"] for t in detail["trials"]] == ["Complete"] * 3
    labels = [
        {a["key"]: a["value"] for a in t["user_attrs"]}.get("label") for t in detail["trials"]
    ]
    assert labels == ["pure sparse", "pure uniform", "pure red"]
