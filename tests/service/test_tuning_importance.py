"""PED-ANOVA parameter importance in the read model, `status NAME` and the study page."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
from optuna.distributions import FloatDistribution

from service.executor.base import Job, JobFn
from service.executor.inline import InlineExecutor
from service.read.model import IMPORTANCE_MIN_TRIALS, importance
from service.read.model import study as read_study
from service.tuning.contracts import InnerJob, InnerResult
from service.tuning.spec.model import parse_spec
from service.tuning.study.loop import Timing, run_study

FAST = Timing(heartbeat=1, grace=3, lease=4, poll=0.2)
SPEC = {"objective": "auc", "methods": ["sparse", "uniform", "red"]}
Spec = Callable[..., dict[str, Any]]


def _trials(n: int) -> list[optuna.trial.FrozenTrial]:
    """`n` trials whose value is decided by u0 alone; u1 is noise."""
    rng = np.random.default_rng(0)
    made = []
    for number in range(n):
        u0, u1 = rng.uniform(), rng.uniform()
        trial = optuna.trial.create_trial(
            value=-((u0 - 0.2) ** 2),
            params={"u0": u0, "u1": u1},
            distributions={"u0": FloatDistribution(0, 1), "u1": FloatDistribution(0, 1)},
        )
        trial.number = number
        made.append(trial)
    return made


def test_importance_ranks_the_parameter_that_decides_the_value() -> None:
    found = importance(SPEC, _trials(40))
    assert set(found) == {"u0 (sparse)", "u1 (uniform)"}
    assert found["u0 (sparse)"] > found["u1 (uniform)"]


def test_no_importance_before_enough_trials() -> None:
    assert importance(SPEC, _trials(IMPORTANCE_MIN_TRIALS - 1)) == {}
    assert importance(SPEC, _trials(IMPORTANCE_MIN_TRIALS))


class MadeUpExecutor(InlineExecutor):
    """Finishes each job at once with a value decided by the weight of `red`."""

    def submit(self, fn: JobFn, job: Job) -> None:
        super().submit(_made_up, job)  # type: ignore[arg-type]


def _made_up(job: InnerJob) -> InnerResult:
    value = -((job.config.shaping.weights["red"] - 0.6) ** 2)
    curve = {0: {"eval/rm_mean": 0.0}, 4: {"eval/rm_mean": value}}
    return InnerResult(job.seed_index, host="test", value=value, curve=curve, steps=4)


def test_status_and_the_study_page_show_importance(tmp_path: Path, make_spec: Spec) -> None:
    from fastapi import FastAPI
    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from service.cli import app
    from service.dashboard.routes import router
    from service.settings import Settings

    home = tmp_path / "home"
    url = f"sqlite:///{home / 'studies.db'}"
    spec = parse_spec(make_spec(budget=IMPORTANCE_MIN_TRIALS + 2, seeds=1))
    run_study(spec, url, home, MadeUpExecutor(), timing=FAST)
    shown = read_study(url, spec.name)
    assert set(shown.importance) == {"u0 (sparse)", "u1 (uniform)"}
    assert sum(shown.importance.values()) == pytest.approx(1.0)

    result = CliRunner().invoke(
        app, ["status", spec.name, "--home", str(home)], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    assert "importance (PED-ANOVA): u" in result.output

    site = FastAPI()
    site.state.settings = Settings(home=home, storage=url)
    site.include_router(router)
    page = TestClient(site).get(f"/studies/{spec.name}").text
    assert '<div class="plot" id="importance">' in page
