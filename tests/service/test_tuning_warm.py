"""Warm starts: an earlier study's completed trials seed the sampler without counting
toward the budget, its control arms measured the same way are not rerun, and an earlier
study that is missing or not comparable is refused before anything is written. Nothing
here depends on the backend (`test_tuning_study` runs the loop on both): the tests share
one SQLite database and one earlier study."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.trial import FrozenTrial, TrialState
from typer.testing import CliRunner

from service.cli import app
from service.executor import InlineExecutor
from service.read.model import study as read_study
from service.store import studies as store
from service.tuning.contracts import TrialRecord
from service.tuning.search.warm import check_warm_start
from service.tuning.spec.model import SpecError, StudySpec, parse_spec
from service.tuning.study.loop import Timing, run_study
from tests.service.conftest import tiny_spec

FAST = Timing(heartbeat=1, grace=3, lease=4, poll=0.2)
Spec = Callable[..., dict[str, Any]]


def _run(spec: StudySpec, url: str, home: Path) -> None:
    run_study(spec, url, home, InlineExecutor(), timing=FAST)


def _trials(url: str, name: str) -> list[FrozenTrial]:
    return optuna.load_study(study_name=name, storage=url).get_trials()


@pytest.fixture(scope="module")
def warm_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('warm') / 'studies.db'}"


@pytest.fixture(scope="module")
def earlier(warm_url: str, tmp_path_factory: pytest.TempPathFactory) -> StudySpec:
    """A finished study of 3 control arms and 1 proposal, one seed each."""
    spec = parse_spec(tiny_spec("earlier", seeds=1))
    _run(spec, warm_url, tmp_path_factory.mktemp("earlier"))
    return spec


def test_a_warm_start_reuses_the_arms_and_seeds_the_sampler(
    warm_url: str, tmp_path: Path, make_spec: Spec, earlier: StudySpec
) -> None:
    spec = parse_spec(make_spec(budget=5, seeds=1, warm_start=[earlier.name]))
    _run(spec, warm_url, tmp_path)

    before = {t.number: t for t in _trials(warm_url, earlier.name)}
    found = _trials(warm_url, spec.name)
    records = [TrialRecord.from_trial(t) for t in found]
    copied = [(t, r) for t, r in zip(found, records, strict=True) if r.warm_start or r.reused_from]
    assert len(copied) == 4  # every completed trial of the earlier study
    for t, r in copied:
        origin = before[int((r.warm_start or r.reused_from).split("#")[1])]
        assert t.values == origin.values and t.params == origin.params
    reused = sorted(r.label for _, r in copied if r.reused_from)
    assert reused == ["pure red", "pure sparse", "pure uniform"]
    ran = [t for t, r in zip(found, records, strict=True) if not (r.warm_start or r.reused_from)]
    # The budget counts the 3 reused arms: 2 trials ran, neither a control arm again.
    assert len(ran) == 2 and all(t.state == TrialState.COMPLETE for t in ran)
    assert not any(TrialRecord.from_trial(t).label for t in ran)
    shown = read_study(warm_url, spec.name)
    assert shown.done == 5 and shown.sparse is not None
    warm_only = next(t for t, r in copied if r.warm_start)
    assert shown.best is None or shown.best.trial != warm_only.number


def test_other_inner_settings_seed_the_sampler_but_the_arms_run_again(
    warm_url: str, tmp_path: Path, make_spec: Spec, earlier: StudySpec
) -> None:
    spec = parse_spec(make_spec(budget=3, seeds=2, warm_start=[earlier.name]))
    _run(spec, warm_url, tmp_path)
    records = [TrialRecord.from_trial(t) for t in _trials(warm_url, spec.name)]
    assert sum(bool(r.warm_start) for r in records) == 4
    assert not any(r.reused_from for r in records)  # 2 seeds here, 1 there: rerun
    ran = [r.label for r in records if not r.warm_start]
    assert ran == ["pure sparse", "pure uniform", "pure red"]


def test_rerun_control_arms_runs_them_again(
    warm_url: str, tmp_path: Path, make_spec: Spec, earlier: StudySpec
) -> None:
    spec = parse_spec(
        make_spec(budget=3, seeds=1, warm_start=[earlier.name], rerun_control_arms=True)
    )
    _run(spec, warm_url, tmp_path)
    records = [TrialRecord.from_trial(t) for t in _trials(warm_url, spec.name)]
    assert [r.label for r in records if not r.warm_start] == [
        "pure sparse",
        "pure uniform",
        "pure red",
    ]


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"methods": ["sparse", "red", "uniform"]}, ["methods", "in order"]),
        ({"knobs": {"kl_coef": {"low": 0.01, "high": 0.1}}}, ["knobs"]),
        ({"objective": "final"}, ["objective 'auc' there, 'final' here"]),
        ({"task": {"name": "synthetic", "options": {"n_words": 16}}}, ["task"]),
    ],
)
def test_an_incomparable_study_is_refused_naming_the_difference(
    warm_url: str, make_spec: Spec, earlier: StudySpec, fields: dict[str, Any], words: list[str]
) -> None:
    spec = parse_spec(make_spec(warm_start=[earlier.name], **fields))
    with pytest.raises(SpecError) as refused:
        check_warm_start(spec, warm_url)
    message = str(refused.value)
    assert f"study {earlier.name!r} is not comparable" in message
    assert all(w in message for w in words), message


def test_the_cli_refuses_a_missing_or_incomparable_warm_start_and_writes_nothing(
    tmp_path: Path, make_spec: Spec
) -> None:
    home = tmp_path / "home"
    url = f"sqlite:///{home / 'studies.db'}"
    earlier = parse_spec(make_spec(name="earlier", budget=3, seeds=1))
    _run(earlier, url, home)
    for warm, words in [
        (["nowhere"], "no study 'nowhere'"),
        (["earlier"], "methods ['sparse', 'uniform', 'red'] there, ['sparse', 'red'] here"),
    ]:
        path = tmp_path / "later.yaml"
        later = make_spec(name="later", methods=["sparse", "red"], warm_start=warm)
        path.write_text(yaml.safe_dump(later))
        result = CliRunner().invoke(
            app, ["run", str(path), "--home", str(home)], env={"COLUMNS": "300"}
        )
        assert result.exit_code == 2, result.output
        assert words in " ".join(result.output.split()), result.output
        assert "Traceback" not in result.output
        with pytest.raises(store.StudyNotFound):
            store.get_study(url, "later")


def test_warm_start_naming_itself_is_refused(make_spec: Spec) -> None:
    spec = make_spec()
    with pytest.raises(SpecError, match="warm_start names this study"):
        parse_spec({**spec, "warm_start": [spec["name"]]})
