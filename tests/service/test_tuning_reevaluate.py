"""Re-evaluating the incumbent and the sparse control on fresh seeds: real runs, paired
differences, kept with the study, resumable, shown by the CLI, the API and the dashboard."""

from __future__ import annotations

import html
import math
import statistics
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from service.api.app import create_app
from service.cli import app as cli_app
from service.dashboard.routes import router
from service.executor import InlineExecutor
from service.executor.base import Executor, Job, JobFn, Outcome
from service.settings import Settings
from service.tuning import read
from service.tuning.objective import objective_value
from service.tuning.read import reevaluation
from service.tuning.reevaluate import FRESH_SEEDS, ReevaluationError, reevaluate
from service.tuning.spec import StudySpec, parse_spec
from service.tuning.study import Timing, run_study
from trainers.ppo import train
from trainers.tasks import make_task

FAST = Timing(heartbeat=1, grace=3, lease=4, poll=0.2)


@pytest.fixture
def finished(
    tmp_path: Path, make_spec: Callable[..., dict[str, Any]]
) -> tuple[StudySpec, str, Path]:
    """A completed study of its 3 control arms, one seed each (sparse, uniform, red)."""
    spec = parse_spec(make_spec(budget=3, seeds=1, seed=5))
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    assert run_study(spec, url, tmp_path, InlineExecutor(), timing=FAST).done == 3
    return spec, url, tmp_path


def test_the_chosen_trial_and_the_sparse_control_run_on_fresh_paired_seeds(
    finished: tuple[StudySpec, str, Path],
) -> None:
    spec, url, home = finished
    seen: list[str] = []
    result = reevaluate(spec, url, home, InlineExecutor(), seeds=3, trial=2, on_run=seen.append)

    fresh = [5 + FRESH_SEEDS + k for k in range(3)]
    assert result["seeds"] == fresh and len(seen) == 6
    red, sparse = result["arms"]
    assert (red["trial"], red["label"], sparse["trial"], sparse["label"]) == (
        2,
        "pure red",
        0,
        "pure sparse",
    )
    for arm in (red, sparse):
        assert len(arm["values"]) == 3 and all(math.isfinite(v) for v in arm["values"])
        assert arm["mean"] == pytest.approx(statistics.fmean(arm["values"]))
        assert arm["stderr"] == pytest.approx(statistics.stdev(arm["values"]) / math.sqrt(3))
    paired = [a - b for a, b in zip(red["values"], sparse["values"], strict=True)]
    assert result["difference"]["values"] == pytest.approx(paired)
    assert result["difference"]["mean"] == pytest.approx(statistics.fmean(paired))

    # A real inner run on the fresh seed: training it directly gives the same value.
    config = spec.train_config(red["weights"], red["knobs"], seed=fresh[0])
    direct = train(config, make_task("synthetic", home))
    curve = {int(s): m for s, m in direct.curves.items()}
    expected = objective_value(spec.objective, curve, direct.steps, spec.target)
    assert red["values"][0] == pytest.approx(expected)

    kept = reevaluation(url, spec.name)  # kept with the study
    assert kept is not None and kept.model_dump(mode="json")["seeds"] == result["seeds"]
    assert [a.mean for a in kept.arms] == [a["mean"] for a in result["arms"]]
    runs = sorted((home / "studies" / spec.name / "reevaluation").glob("*/seed*"))
    assert len(runs) == 6 and all((r / "checkpoint.pt").is_file() for r in runs)


def test_a_repeated_reevaluation_reuses_the_finished_runs(
    finished: tuple[StudySpec, str, Path],
) -> None:
    spec, url, home = finished
    first = reevaluate(spec, url, home, InlineExecutor(), seeds=2, trial=1)
    stamps = {p: p.stat().st_mtime_ns for p in home.glob("studies/*/reevaluation/*/*/*.pt")}
    again = reevaluate(spec, url, home, InlineExecutor(), seeds=2, trial=1)
    assert [a["values"] for a in again["arms"]] == [a["values"] for a in first["arms"]]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing retrained


def test_the_incumbent_by_default_alone_when_it_is_the_sparse_arm(
    finished: tuple[StudySpec, str, Path],
) -> None:
    spec, url, home = finished
    result = reevaluate(spec, url, home, InlineExecutor(), seeds=2, trial=0)
    assert [a["label"] for a in result["arms"]] == ["pure sparse"]
    assert result["difference"] is None
    by_default = reevaluate(spec, url, home, InlineExecutor(), seeds=2)
    trials = read.trials(url, spec.name).data
    best = max(trials, key=lambda t: t.value or float("-inf"))
    assert by_default["arms"][0]["trial"] == best.number
    assert by_default["arms"][0]["study_value"] == best.value


class _LosesFirstWorker(Executor):
    """Inline, except that the first job's worker is lost (as Ray reports past retries)."""

    slots = 1

    def __init__(self) -> None:
        self.inline, self.lost = InlineExecutor(), False

    def submit(self, fn: JobFn, job: Job) -> None:
        if not self.lost:
            self.lost = True
            self.done = [Outcome(job, error="WorkerCrashedError: the worker died")]
            return
        self.inline.submit(fn, job)

    def wait(self, timeout_s: float) -> list[Outcome]:
        done, self.done = getattr(self, "done", []), []
        return done + self.inline.wait(timeout_s)

    def running(self) -> int:
        return 0


def test_a_lost_run_is_an_error_naming_it_and_nothing_is_kept(
    finished: tuple[StudySpec, str, Path],
) -> None:
    spec, url, home = finished
    with pytest.raises(ReevaluationError, match=r"trial 2, seed 10005 failed: WorkerCrashed"):
        reevaluate(spec, url, home, _LosesFirstWorker(), seeds=2, trial=2)
    assert reevaluation(url, spec.name) is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"seeds": 1}, "at least 2 seeds"),
        ({"seeds": 2, "trial": 7}, "has no completed trial 7"),
    ],
)
def test_bad_requests_are_refused(
    finished: tuple[StudySpec, str, Path], kwargs: dict[str, Any], message: str
) -> None:
    spec, url, home = finished
    with pytest.raises(ReevaluationError, match=message):
        reevaluate(spec, url, home, InlineExecutor(), **kwargs)


def test_the_cli_api_and_dashboard_show_it(
    finished: tuple[StudySpec, str, Path],
    serving: Callable[[FastAPI], AbstractContextManager[str]],
) -> None:
    spec, url, home = finished
    where = ["--storage", url, "--home", str(home)]
    runner = CliRunner()
    ran = runner.invoke(
        cli_app,
        ["reevaluate", spec.name, "--seeds", "2", "--trial", "2", "--executor", "inline", *where],
    )
    assert ran.exit_code == 0, ran.output
    assert "re-evaluated on fresh seeds [10005, 10006]" in ran.output
    study = read.study(url, spec.name)
    assert study.reevaluation is not None and study.reevaluation.seeds == [10005, 10006]
    assert [a.trial for a in study.reevaluation.arms] == [2, 0]
    said = study.reevaluation.verdict
    assert said.endswith("over 2 fresh seeds") and "95 % CI [" in said, said
    assert " ".join(said.split()) in " ".join(ran.output.split())
    shown = runner.invoke(cli_app, ["status", spec.name, *where], env={"COLUMNS": "300"})
    assert "re-evaluated on fresh seeds" in shown.output and said in shown.output

    app = FastAPI()
    app.state.settings = Settings(home=home, storage=url)
    app.include_router(router)
    page = TestClient(app).get(f"/studies/{spec.name}")
    assert page.status_code == 200 and 'id="reevaluation"' in page.text
    assert f'<p class="verdict" id="verdict"><b>{html.escape(said)}</b></p>' in page.text

    with serving(create_app(Settings(home=home, storage=url, coordinator=False))) as base:
        remote = runner.invoke(cli_app, ["status", spec.name, "--url", base])
    assert remote.exit_code == 0, remote.output
    assert "re-evaluated on fresh seeds [10005, 10006]" in remote.output

    missing = runner.invoke(cli_app, ["reevaluate", "nope", "--executor", "inline", *where])
    assert missing.exit_code != 0 and "no study named 'nope'" in missing.output
