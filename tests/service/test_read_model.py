"""The read model keeps what it derives from all of a study's trials until a trial is added
or changes state, and follows every such change: a live study's pages stay current while
a finished study of 10,000 trials costs a page what its own rows cost."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution

from service.read import model as read
from service.store import studies as store
from service.tuning.contracts import CONTROL_SPARSE, TrialRecord, write
from service.tuning.optuna_storage import open_storage
from service.tuning.spec.model import parse_spec

NAME = "live"
U = {"u0": FloatDistribution(0, 1)}


def _study(url: str) -> optuna.Study:
    spec = parse_spec(
        {
            "name": NAME,
            "task": {"name": "synthetic"},
            "methods": ["sparse", "red"],
            "seeds": 2,
            "budget": 10,
            "executor": "inline",
        }
    )
    store.create_study(url, NAME, spec.model_dump(mode="json"))
    return optuna.create_study(study_name=NAME, storage=open_storage(url), direction="maximize")


def _finish(study: optuna.Study, values: list[float], label: str = "") -> None:
    trial = study.ask(U)
    curve = {"0": {"eval/rm_mean": 0.0}, "4": {"eval/rm_mean": sum(values) / 2}}
    write(trial, TrialRecord(label=label, seed_values=values, curves=[curve, curve]))
    study.tell(trial, sum(values) / len(values))


def test_reads_follow_every_trial_added_or_finished(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    study = _study(url)
    study.enqueue_trial({"u0": 0.0})
    _finish(study, [0.1, 0.3], label=CONTROL_SPARSE)
    study.enqueue_trial({"u0": 0.5})
    _finish(study, [0.4, 0.4])

    first = read.study(url, NAME)
    assert first.done == 2 and first.best and first.best.trial == 1
    rows = read.trials(url, NAME).data
    assert rows[1].versus_sparse and rows[1].versus_sparse.pooled_dof == 1
    assert read.trials(url, NAME).data[1] is rows[1]  # a finished trial's row is built once

    running = study.ask(U)  # a trial starts: the counts change, the finished rows stay
    now = read.study(url, NAME)
    assert now.running == 1 and now.done == 2
    page = read.trials(url, NAME)
    assert page.count == 3 and page.data[2].state == "RUNNING"
    assert read.curves(url, NAME).params[2] == running.params
    assert set(read.curves(url, NAME).curves) == {0, 1}  # finished trials' curves only

    write(running, TrialRecord(seed_values=[0.9, 0.7]))
    study.tell(running, 0.8)  # it finishes: the best, the pooled spread and rows follow
    after = read.study(url, NAME)
    assert after.done == 3 and after.running == 0 and after.best and after.best.trial == 2
    rows = read.trials(url, NAME).data
    assert rows[1].versus_sparse and rows[1].versus_sparse.pooled_dof == 2
    assert rows[2].versus_sparse and rows[2].versus_sparse.mean == pytest.approx(0.8 - 0.2)
    assert read.trial(url, NAME, 2).state == "COMPLETE"
