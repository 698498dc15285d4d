"""Constraints (kl_max) and a second objective (the gold judge): infeasible trials are
marked and never the incumbent, the sampler is told, the Pareto front is shown, and specs
that make no sense are refused."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState

from service.executor import InlineExecutor
from service.read.model import study as read_study
from service.read.model import trials as read_trials
from service.tuning.contracts import TrialRecord
from service.tuning.search.objective import incumbent, pareto_front
from service.tuning.spec.model import SpecError, StudySpec, parse_spec
from service.tuning.study.admission import check_runnable
from service.tuning.study.loop import Timing, run_study
from trainers.tasks import TASKS
from trainers.tasks.synthetic import SyntheticTask

FAST = Timing(heartbeat=1, grace=3, lease=4, poll=0.2)
Spec = Callable[..., dict[str, Any]]


class GoldSyntheticTask(SyntheticTask):
    """The synthetic task with a gold judge the RM knows nothing of: the share of the
    word w1 in a text."""

    name = "synthetic-gold"

    def gold(self, texts: Sequence[str]) -> np.ndarray:
        return np.array([t.split().count("w1") / max(len(t.split()), 1) for t in texts])


@pytest.fixture
def gold_task(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setitem(TASKS, "synthetic-gold", f"{__name__}:GoldSyntheticTask")
    return "synthetic-gold"


def _run(spec: StudySpec, url: str, home: Path) -> None:
    run_study(spec, url, home, InlineExecutor(), timing=FAST)


def _trials(url: str, name: str) -> list[FrozenTrial]:
    return optuna.load_study(study_name=name, storage=url).get_trials()


def _made(number: int, values: list[float], kl_excess: float | None) -> FrozenTrial:
    trial = optuna.create_trial(
        values=values,
        params={"u0": 0.5},
        distributions={"u0": FloatDistribution(0, 1)},
        system_attrs={} if kl_excess is None else {"constraints:kl_max": kl_excess},
    )
    trial.number = number
    return trial


def test_the_incumbent_is_the_best_feasible_trial() -> None:
    trials = [_made(0, [3.0], 0.5), _made(1, [2.0], -0.1), _made(2, [1.0], None)]
    best = incumbent(trials, "auc")
    assert best is not None and best.number == 1  # trial 0 is better but broke kl_max
    assert incumbent(trials[:1], "auc") is None


def test_the_pareto_front_keeps_the_undominated_trials() -> None:
    trials = [_made(0, [3.0, 0.1], None), _made(1, [2.0, 0.5], None), _made(2, [1.0, 0.4], None)]
    assert [t.number for t in pareto_front(trials, ["maximize", "maximize"])] == [0, 1]
    # Minimising the first objective, trial 2 (lowest) joins the front and 0 leaves it.
    assert [t.number for t in pareto_front(trials, ["minimize", "maximize"])] == [1, 2]


def test_kl_max_marks_trials_infeasible_and_the_sampler_sees_it(
    sqlite_url: str, tmp_path: Path, make_spec: Spec
) -> None:
    """Any PPO update moves the policy: a kl_max of 1e-9 makes every trial infeasible."""
    spec = parse_spec(
        make_spec(budget=4, seeds=2, sampler="gp", constraints={"kl_max": 1e-9}, seed=1)
    )
    _run(spec, sqlite_url, tmp_path)
    found = [t for t in _trials(sqlite_url, spec.name) if t.state == TrialState.COMPLETE]
    assert len(found) == 4
    for t in found:
        kl = TrialRecord.from_trial(t).final["eval/kl"]  # the mean over seeds
        assert t.constraints == {"kl_max": pytest.approx(kl - 1e-9)}  # what samplers read
        assert kl > 1e-9
    summary = read_study(sqlite_url, spec.name)
    assert summary.best is None and summary.best_value is None  # nothing feasible to credit
    assert all(not t.feasible for t in read_trials(sqlite_url, spec.name).data)


def test_a_gold_objective_gives_two_values_and_a_pareto_front(
    tmp_path: Path, make_spec: Spec, gold_task: str
) -> None:
    from fastapi import FastAPI
    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from service.cli import app
    from service.dashboard.routes import router
    from service.settings import Settings

    home = tmp_path / "home"
    url = f"sqlite:///{home / 'studies.db'}"
    spec = parse_spec(
        make_spec(
            task={"name": gold_task},
            budget=5,
            seeds=2,
            objectives=["auc", "gold"],
            constraints={"kl_max": 1e6},
        )
    )
    check_runnable(spec, home)  # the task has a gold judge
    _run(spec, url, home)
    study = optuna.load_study(study_name=spec.name, storage=url)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MAXIMIZE"]
    complete = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    assert len(complete) == 5
    for t in complete:
        gold = TrialRecord.from_trial(t).gold_values
        assert len(gold) == 2 and all(math.isfinite(g) for g in gold)
        assert t.values[1] == pytest.approx(statistics.fmean(gold))
        assert t.values[0] == pytest.approx(statistics.fmean(t.user_attrs["seed_values"]))

    shown = read_study(url, spec.name)
    front = {t.number for t in pareto_front(complete, ["maximize", "maximize"])}
    assert set(shown.pareto_front) == front
    assert shown.best is not None and shown.best.trial in front
    assert shown.best.value == max(t.values[0] for t in complete)

    result = CliRunner().invoke(
        app, ["status", spec.name, "--home", str(home)], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    assert "Pareto front (auc, gold): trials " in result.output and "gold" in result.output

    site = FastAPI()
    site.state.settings = Settings(home=home, storage=url)
    site.include_router(router)
    page = TestClient(site).get(f"/studies/{spec.name}").text
    assert '<div class="plot" id="pareto">' in page


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"objectives": ["final", "gold"]}, ["objectives", "objective (auc) first, then gold"]),
        ({"objectives": ["auc", "rm"]}, ["objectives", "'gold'"]),
        ({"objectives": ["auc", "gold"], "pruner": "median"}, ["pruner", "objectives"]),
        ({"constraints": {"kl_max": 0}}, ["constraints.kl_max", "greater than 0"]),
        ({"constraints": {"kl": 1}}, ["constraints.kl", "unknown field"]),
    ],
)
def test_objectives_and_constraints_that_make_no_sense_are_refused(
    make_spec: Spec, fields: dict[str, Any], words: list[str]
) -> None:
    with pytest.raises(SpecError) as refused:
        parse_spec(make_spec(**fields))
    assert all(w in str(refused.value) for w in words), refused.value


def test_a_gold_objective_on_a_task_without_a_gold_judge_is_refused(
    tmp_path: Path, make_spec: Spec
) -> None:
    spec = parse_spec(make_spec(objectives=["auc", "gold"]))
    with pytest.raises(SpecError, match="has no gold judge"):
        check_runnable(spec, tmp_path)
