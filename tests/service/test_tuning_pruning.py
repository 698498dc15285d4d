"""Multi-fidelity pruning with several seeds per trial: the mean over seeds is what the
pruner judges, a pruned trial stops all its seeds and is never credited, the budget counts
completed trials, and a study resumed in the middle of a Hyperband bracket goes on judging
against the trials before the crash. Ray's workers judge on PostgreSQL, the rest on SQLite."""

from __future__ import annotations

import statistics
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from service.executor import InlineExecutor
from service.executor.base import Job, JobFn, Outcome
from service.store import studies as store
from service.tuning.contracts import PrunerConfig, TrialRecord
from service.tuning.search.pruning import judge, make_pruner, pruner_config
from service.tuning.spec.model import StudySpec, parse_spec
from service.tuning.study import inner
from service.tuning.study.loop import Progress, Timing, run_study

FAST = Timing(heartbeat=1, grace=3, lease=4, poll=0.2)
STEPS = 6
HYPERBAND_INNER = {
    "steps": STEPS,
    "eval_interval": 1,
    "eval_prompts": 8,
    "ppo": {"rollout_batch": 8, "minibatch": 4, "epochs": 2, "lr": 0.03},
}
"""Evaluated every step, with a learning rate that makes trials differ: rungs at steps 1
and 3 (reduction factor 3), so Hyperband has something to cut."""
Spec = Callable[..., dict[str, Any]]


def _run(spec: StudySpec, url: str, home: Path, **kwargs: Any) -> Progress:
    return run_study(spec, url, home, InlineExecutor(), timing=FAST, **kwargs)


def _trials(url: str, name: str) -> list[FrozenTrial]:
    return optuna.load_study(study_name=name, storage=url).get_trials()


def _hyperband_spec(make_spec: Spec, **fields: Any) -> StudySpec:
    return parse_spec(
        make_spec(
            **{"budget": 7, "seeds": 2, "pruner": "hyperband", "inner": HYPERBAND_INNER, **fields}
        )
    )


def test_the_pruner_config_is_derived_from_the_inner_run(make_spec: Spec) -> None:
    config = pruner_config(_hyperband_spec(make_spec))
    assert config is not None
    assert (config.kind, config.min_resource, config.max_resource) == ("hyperband", 1, STEPS)
    assert pruner_config(parse_spec(make_spec())) is None  # pruner: none


@pytest.mark.e2e
def test_hyperband_with_two_seeds_prunes_on_the_seed_mean_and_completes_the_budget(
    sqlite_url: str, tmp_path: Path, make_spec: Spec
) -> None:
    spec = _hyperband_spec(make_spec, seed=2)
    jobs: list[inner.InnerJob] = []

    class Recording(InlineExecutor):
        def submit(self, fn: JobFn, job: Job) -> None:
            jobs.append(job)
            super().submit(fn, job)

    final = run_study(spec, sqlite_url, tmp_path, Recording(), timing=FAST)

    found = _trials(sqlite_url, spec.name)
    # The control arms are never stopped (the yardstick runs whole); every proposal may be.
    controls = {t.number for t in found if TrialRecord.from_trial(t).label}
    assert len(controls) == len(spec.methods)
    assert all(job.prunable == (job.trial_number not in controls) for job in jobs)
    assert all(job.pruner is not None for job in jobs)  # reported and ranked all the same
    assert not any(t.state == TrialState.PRUNED for t in found if t.number in controls)
    assert all(t.intermediate_values for t in found if t.number in controls)
    counted = Counter(t.state for t in found)
    assert counted[TrialState.COMPLETE] == spec.budget == final.done  # pruned ones not counted
    pruned = [t for t in found if t.state == TrialState.PRUNED]
    assert pruned, "no trial was pruned: the test no longer exercises the pruner"
    complete = [t for t in found if t.state == TrialState.COMPLETE]
    assert final.best == max(t.value for t in complete if t.value is not None)
    for t in pruned:
        record = TrialRecord.from_trial(t)
        assert record.pruned_at is not None and record.pruned_at < STEPS
        # Inline, seed 0 ran to its end before seed 1 started; seed 1 stopped when pruned.
        assert record.steps == [STEPS, record.pruned_at]
        assert len(record.curves) == 2 and record.final  # curves and costs kept
        assert any(k.startswith("cost/") for k in record.final)
    for t in pruned + complete:  # what the pruner saw: the mean of the seeds at each step
        progress = TrialRecord.progress(t.user_attrs, 2)
        for step, value in t.intermediate_values.items():
            assert value == pytest.approx(statistics.fmean(p[step] for p in progress))
    _check_successive_halving(spec, sqlite_url, found)


@pytest.mark.e2e
def test_a_study_resumed_in_the_middle_of_a_bracket_judges_against_the_trials_before(
    sqlite_url: str, tmp_path: Path, make_spec: Spec, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The coordinator dies while trial 4's second seed is at its first rung; `resume`
    retries that trial (its first seed's progress inherited) and the pruner goes on with
    the rung values stored before the crash."""
    spec = _hyperband_spec(make_spec, seed=2, budget=8)
    real = inner.train
    calls = {"n": 0}

    def crash_in_trial_4(config: Any, task: Any, hooks: inner.Hooks, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] != 10:  # trial 4, seed 1: every trial before ran both its seeds
            return real(config, task, hooks, **kwargs)
        report_on = hooks.report

        def report_then_crash(step: int, metrics: dict[str, float]) -> None:
            report_on(step, metrics)
            if step == 1:
                raise KeyboardInterrupt

        return real(config, task, replace(hooks, report=report_then_crash), **kwargs)

    monkeypatch.setattr(inner, "train", crash_in_trial_4)
    with pytest.raises(KeyboardInterrupt):
        _run(spec, sqlite_url, tmp_path)
    assert store.get_study(sqlite_url, spec.name).status == "interrupted"
    before = _trials(sqlite_url, spec.name)
    assert [t.state for t in before][4] == TrialState.RUNNING
    assert TrialRecord.progress(before[4].user_attrs, 2)[0]  # seed 0 had reported

    monkeypatch.setattr(inner, "train", real)
    final = _run(spec, sqlite_url, tmp_path)
    found = _trials(sqlite_url, spec.name)
    assert final.done == spec.budget
    assert Counter(t.state for t in found)[TrialState.COMPLETE] == spec.budget
    retry = next(t for t in found if t.system_attrs.get("failed_trial") == 4)
    assert retry.state in (TrialState.COMPLETE, TrialState.PRUNED)
    # The retry's first seed continued from its checkpoint: no step of it was run again.
    assert TrialRecord.from_trial(retry).placements[0]["resumed_from"] == STEPS
    assert any(t.state == TrialState.PRUNED for t in found)
    judged = _check_successive_halving(spec, sqlite_url, found)
    # Trials after the resume met trials from before it at the same rung.
    crashed = {t.number for t in before}
    assert any(n >= retry.number and crashed & set(rivals) for n, rivals in judged), judged


def _check_successive_halving(
    spec: StudySpec, url: str, found: list[FrozenTrial]
) -> list[tuple[int, list[int]]]:
    """Replay every rung decision from what the store kept: inline, trials are judged in
    the order of their numbers, so a trial met, at each rung, the trials of its bracket
    numbered before it that reached that rung. It went on past a rung exactly when its
    value there was in the best 1/eta of those (Optuna's successive halving). Returns
    (trial, numbers of the trials it was judged against) per decision."""
    config = pruner_config(spec)
    assert config is not None
    pruner = make_pruner(config)
    study = optuna.load_study(study_name=spec.name, storage=url)
    pruner._try_initialization(study)  # type: ignore[attr-defined]  # the brackets only
    bracket = {t.number: pruner._get_bracket_id(study, t) for t in found}  # type: ignore[attr-defined]
    judged = []
    for t in found:
        inherited = "failed_trial" in t.system_attrs  # a retry's rungs are its original's
        for rung in range(4):
            key = f"completed_rung_{rung}"
            if key not in t.system_attrs or inherited:
                continue
            rivals = [
                m
                for m in found
                if m.number < t.number
                and bracket[m.number] == bracket[t.number]
                and key in m.system_attrs
            ]
            values = sorted([m.system_attrs[key] for m in rivals] + [t.system_attrs[key]])
            keep = max(len(values) // config.reduction_factor, 1)
            promoted = t.system_attrs[key] >= values[-keep]
            went_on = (  # the crashed trial was pruned before its coordinator could say so
                f"completed_rung_{rung + 1}" in t.system_attrs
                or TrialRecord.from_trial(t).pruned_at is None
            )
            assert promoted == went_on, (t.number, rung, values)
            judged.append((t.number, [m.number for m in rivals]))
    return judged


@pytest.mark.e2e
def test_status_and_the_study_page_show_pruned_trials_and_their_steps(
    tmp_path: Path, make_spec: Spec
) -> None:
    from fastapi import FastAPI
    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from service.cli import app
    from service.dashboard.routes import router
    from service.settings import Settings

    home = tmp_path / "home"
    url = f"sqlite:///{home / 'studies.db'}"
    spec = _hyperband_spec(make_spec, seed=2)
    _run(spec, url, home)
    pruned = [t for t in _trials(url, spec.name) if t.state == TrialState.PRUNED]
    assert pruned
    shown = [
        f"pruned at step {t.user_attrs['pruned_at']} (steps run {STEPS}, "
        f"{t.user_attrs['pruned_at']})"
        for t in pruned
    ]

    result = CliRunner().invoke(
        app, ["status", spec.name, "--home", str(home)], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    assert all(line in result.output for line in shown), result.output

    site = FastAPI()
    site.state.settings = Settings(home=home, storage=url)
    site.include_router(router)
    page = TestClient(site).get(f"/studies/{spec.name}").text
    assert "steps run" in page
    for t in pruned:
        assert f"pruned at step {t.user_attrs['pruned_at']}</td>" in page
        assert f'<td class="num">{STEPS}, {t.user_attrs["pruned_at"]}</td>' in page


@pytest.mark.e2e
@pytest.mark.usefixtures("ray_cluster")
def test_on_ray_the_workers_judge_each_trial_on_its_seed_mean(
    pg_url: str, tmp_path: Path, make_spec: Spec
) -> None:
    """Two Ray workers run a trial's two seeds: each writes its evaluations to the store and
    the trial is judged on their mean at every step both reached, from the worker processes.
    Which trials Hyperband prunes depends on the order Ray finishes them, so this checks the
    judging; the threaded test below checks that a pruned trial stops the seed beside it.
    On PostgreSQL, what a team's workers write to together (the tests above, on SQLite,
    replay each rung decision)."""
    from service.executor.ray_executor import RayExecutor

    url = pg_url
    inner_run = {**HYPERBAND_INNER, "steps": 12}
    spec = _hyperband_spec(make_spec, seed=2, inner=inner_run, executor="ray")
    run_study(spec, url, tmp_path, RayExecutor(cpus=1, workers=2), timing=FAST)

    found = _trials(url, spec.name)
    assert Counter(t.state for t in found)[TrialState.COMPLETE] == spec.budget
    for t in found:
        progress = TrialRecord.progress(t.user_attrs, 2)
        assert all(progress) and t.intermediate_values, t.number  # both seeds, judged
        for step, value in t.intermediate_values.items():
            assert value == pytest.approx(statistics.fmean(p[step] for p in progress))
        record = TrialRecord.from_trial(t)
        assert len(record.curves) == 2  # pruned or not, both seeds' curves are kept
        if t.state == TrialState.PRUNED:
            assert record.pruned_at is not None and min(record.steps) < 12
    assert any("completed_rung_0" in t.system_attrs for t in found)  # Hyperband's rungs


class LockstepExecutor(InlineExecutor):
    """Two worker threads that start their runs together (a trial's two seeds: the
    coordinator queues them one after the other) and advance together: a run that has
    reported step s waits until the other has reported s too. What Ray does when two seeds
    start at once, without its timing."""

    slots = 2

    def __init__(self) -> None:
        super().__init__()
        self._changed = threading.Condition()
        self._pending: list[Job] = []
        self._at: dict[int, int] = {}  # running thread -> the last step it reported
        self._threads: list[threading.Thread] = []

    def submit(self, fn: JobFn, job: Job) -> None:
        with self._changed:
            self._pending.append(job)
            if len(self._pending) < self.slots:
                return
            pair, self._pending = self._pending, []
            for queued in pair:
                thread = threading.Thread(target=self._work, args=(fn, queued))
                thread.start()
                self._at[thread.ident or 0] = -1
                self._threads.append(thread)

    def _work(self, fn: JobFn, job: Job) -> None:
        result = fn(job)
        with self._changed:
            del self._at[threading.get_ident()]
            self._done.append(Outcome(job, result=result))
            self._changed.notify_all()

    def reported(self, step: int) -> None:
        with self._changed:
            self._at[threading.get_ident()] = step
            self._changed.notify_all()
            self._changed.wait_for(lambda: all(s >= step for s in self._at.values()))

    def wait(self, timeout_s: float) -> list[Outcome]:
        with self._changed:
            self._changed.wait_for(lambda: self._done, timeout_s)
            done, self._done = self._done, []
        return done

    def running(self) -> int:
        with self._changed:
            return len(self._at) + len(self._pending)

    def shutdown(self) -> None:
        for thread in self._threads:
            thread.join()


@pytest.mark.e2e
def test_a_pruned_trial_stops_its_seeds_running_beside_it(
    tmp_path: Path, make_spec: Spec, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two seeds of a trial run side by side: the seed whose evaluation completes a rung
    prunes the trial, and the other learns it from the store at its next evaluation, one
    step later, long before the end of its run."""
    executor = LockstepExecutor()
    real = inner.train

    def in_lockstep(config: Any, task: Any, hooks: inner.Hooks, **kwargs: Any) -> Any:
        report_on = hooks.report

        def report(step: int, metrics: dict[str, float]) -> None:
            report_on(step, metrics)  # judged first: the other seed then sees the verdict
            executor.reported(step)

        return real(config, task, replace(hooks, report=report), **kwargs)

    monkeypatch.setattr(inner, "train", in_lockstep)
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    spec = _hyperband_spec(make_spec, seed=2)
    run_study(spec, url, tmp_path, executor, timing=FAST)

    found = _trials(url, spec.name)
    assert Counter(t.state for t in found)[TrialState.COMPLETE] == spec.budget
    pruned = [TrialRecord.from_trial(t) for t in found if t.state == TrialState.PRUNED]
    assert pruned, "no trial was pruned: the test no longer exercises the pruner"
    for record in pruned:
        assert record.pruned_at is not None
        assert max(record.steps) <= record.pruned_at + 1 < STEPS, record.steps


def test_a_control_arm_is_judged_with_the_others_but_never_stopped(tmp_path: Path) -> None:
    config = PrunerConfig("median", min_resource=1, max_resource=10)
    url = f"sqlite:///{tmp_path / 'judged.db'}"
    study = optuna.create_study(
        study_name="judged", storage=url, pruner=make_pruner(config), direction="maximize"
    )
    for value in (1.0, 2.0, 3.0, 4.0, 5.0):
        study.add_trial(optuna.trial.create_trial(value=value, intermediate_values={1: value}))
    storage = study._storage
    verdicts = []
    for prunable in (False, True):
        trial = study.ask()  # far behind the median at step 1
        storage.set_trial_user_attr(trial._trial_id, TrialRecord.progress_key(0), {"1": -5.0})
        verdicts.append(judge(study, storage, trial._trial_id, 1, config, prunable))
        assert storage.get_trial(trial._trial_id).intermediate_values == {1: -5.0}
    assert verdicts == [False, True]  # the control arm reported, ranked, and ran on
