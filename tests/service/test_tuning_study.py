"""The coordinator's loop with the inline executor: budgets, control arms, per-seed results,
failures, cancellation and resume. A whole study and its cancellation on SQLite and
PostgreSQL; the rest, which the backend does not change, on SQLite."""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from service.executor import InlineExecutor
from service.executor.base import Executor, Job, JobFn, Outcome
from service.store import studies as store
from service.tuning.contracts import InnerJob, InnerResult, TrialRecord
from service.tuning.search import space
from service.tuning.spec.model import StudySpec, parse_spec
from service.tuning.study import inner
from service.tuning.study.loop import Progress, Timing, run_study

FAST = Timing(heartbeat=1, grace=3, lease=4, poll=0.2)
TINY_INNER_PRUNED = {
    "eval_prompts": 8,
    "ppo": {"rollout_batch": 8, "minibatch": 4, "epochs": 2, "lr": 0.03},
}
Spec = Callable[..., dict[str, Any]]


def _run(spec: StudySpec, url: str, home: Path, **kwargs: Any) -> Progress:
    return run_study(
        spec, url, home, kwargs.pop("executor", InlineExecutor()), timing=FAST, **kwargs
    )


def trials(url: str, name: str) -> list[FrozenTrial]:
    return optuna.load_study(study_name=name, storage=url).get_trials()


def test_a_trials_record_is_built_from_its_seeds_and_read_back_with_int_steps() -> None:
    seeds = [
        InnerResult(k, "host", value=v, curve={0: {"r": 0.0}, 4: {"r": v}}, final=f, steps=4)
        for k, (v, f) in enumerate([(1.0, {"kl": 0.1, "r": 1.0}), (3.0, {"kl": 0.3})])
    ]
    record = TrialRecord.of_results(seeds)
    assert record.seed_values == [1.0, 3.0] and record.stderr == pytest.approx(1.0)
    assert record.final == {"kl": pytest.approx(0.2)}  # the metrics every seed has
    assert [p["seed_index"] for p in record.placements] == [0, 1] and record.steps == [4, 4]
    attrs = record.to_user_attrs()
    assert list(attrs["curves"][1]) == ["0", "4"]  # JSON's keys, as Optuna stores them
    assert TrialRecord.from_attrs(attrs).curves == [s.curve for s in seeds]

    lost = InnerResult(1, host="", error="the worker died")  # a lost worker left no host
    failed = TrialRecord.of_results([seeds[0], lost])
    assert failed.failed_for == "the worker died" and not failed.seed_values
    assert [p["seed_index"] for p in failed.placements] == [0]


def states(url: str, name: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in trials(url, name):
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return counts


def test_a_study_runs_to_its_budget_with_control_arms_first(
    storage_url: str, tmp_path: Path, make_spec: Spec
) -> None:
    spec = parse_spec(make_spec(budget=5, seeds=2, seed=3))
    seen: list[Progress] = []
    final = _run(spec, storage_url, tmp_path, on_progress=seen.append, owner="carol@lab")

    all_trials = trials(storage_url, spec.name)
    assert [t.state for t in all_trials] == [TrialState.COMPLETE] * 5
    assert final.done == 5 and final.last == "completed"
    assert [p.done for p in seen] == [1, 2, 3, 4, 5]
    record = store.get_study(storage_url, spec.name)
    assert record.status == "completed" and record.spec == spec.model_dump(mode="json")
    assert record.owner == "carol@lab"
    assert store.lease_holder(storage_url, spec.name) is None  # released

    arms = [t.user_attrs.get("label") for t in all_trials]
    assert arms == ["pure sparse", "pure uniform", "pure red", None, None]
    for t in all_trials[:3]:
        method = t.user_attrs["label"].removeprefix("pure ")
        assert t.user_attrs["weights"] == {m: float(m == method) for m in spec.methods}
    for t in all_trials:
        seed_values = t.user_attrs["seed_values"]
        assert len(seed_values) == 2 and all(math.isfinite(v) for v in seed_values)
        assert t.value == pytest.approx(statistics.fmean(seed_values))
        assert t.user_attrs["stderr"] == pytest.approx(statistics.stdev(seed_values) / math.sqrt(2))
        assert sum(t.user_attrs["weights"].values()) == pytest.approx(1.0)
        assert t.user_attrs["weights"] == space.weights_from_params(spec.methods, t.params)
        curves = t.user_attrs["curves"]
        assert len(curves) == 2
        for curve in curves:  # evaluated before training, every 2 steps and at the end
            assert sorted(curve, key=int) == ["0", "2", "4"]
            assert all(math.isfinite(m["eval/rm_mean"]) for m in curve.values())
        assert t.user_attrs["final"]

    best = max(all_trials, key=lambda t: t.value or -math.inf)
    assert final.best == best.value and final.best_weights == best.user_attrs["weights"]
    assert final.sparse == all_trials[0].value
    study = optuna.load_study(study_name=spec.name, storage=storage_url)
    assert study.user_attrs["sampler"] == {"name": "random", "seed": 3, "startup_trials": 8}
    assert study.user_attrs["spec"] == spec.model_dump(mode="json")


def test_resuming_a_completed_study_changes_nothing(
    sqlite_url: str, tmp_path: Path, make_spec: Spec
) -> None:
    spec = parse_spec(make_spec(budget=3, seeds=1))
    _run(spec, sqlite_url, tmp_path)
    before = trials(sqlite_url, spec.name)
    again = _run(spec, sqlite_url, tmp_path)
    after = trials(sqlite_url, spec.name)
    assert again.done == 3
    assert [(t.number, t.state, t.value, t.params, t.datetime_complete) for t in after] == [
        (t.number, t.state, t.value, t.params, t.datetime_complete) for t in before
    ]
    assert store.get_study(sqlite_url, spec.name).status == "completed"


def test_a_trial_that_fails_is_recorded_and_the_study_goes_on(
    tmp_path: Path, make_spec: Spec, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run whose objective is NaN fails its trial, with the reason; the study still ends
    with its budget of completed trials."""
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    spec = parse_spec(make_spec(budget=4, seeds=2))
    real = inner.objective_value
    calls = {"n": 0}

    def nan_for_the_third_run(*args: Any, **kwargs: Any) -> float:
        calls["n"] += 1
        return math.nan if calls["n"] == 3 else real(*args, **kwargs)

    monkeypatch.setattr(inner, "objective_value", nan_for_the_third_run)
    final = _run(spec, url, tmp_path)

    all_trials = trials(url, spec.name)
    failed = [t for t in all_trials if t.state == TrialState.FAIL]
    assert len(failed) == 1 and failed[0].number == 1  # the third run is trial 1's first seed
    assert "non-finite" in failed[0].user_attrs["failed_for"]
    assert failed[0].user_attrs["label"] == "pure uniform"
    assert final.done == 4 and states(url, spec.name) == {"COMPLETE": 4, "FAIL": 1}
    assert store.get_study(url, spec.name).status == "completed"


def test_a_run_that_raises_fails_its_trial_with_the_reason(
    tmp_path: Path, make_spec: Spec, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    spec = parse_spec(make_spec(budget=3, seeds=1))
    real = inner.train
    calls = {"n": 0}

    def diverge_once(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            raise FloatingPointError("non-finite logprobs at step 1")
        return real(*args, **kwargs)

    monkeypatch.setattr(inner, "train", diverge_once)
    _run(spec, url, tmp_path)
    failed = [t for t in trials(url, spec.name) if t.state == TrialState.FAIL]
    assert [t.user_attrs["failed_for"] for t in failed] == [
        "FloatingPointError: non-finite logprobs at step 1"
    ]
    assert states(url, spec.name) == {"COMPLETE": 3, "FAIL": 1}


def test_max_failures_stops_a_study_whose_every_trial_fails(
    sqlite_url: str, tmp_path: Path, make_spec: Spec
) -> None:
    """A task option the task refuses fails every inner run (the CLI refuses it earlier)."""
    spec = parse_spec(
        make_spec(task={"name": "synthetic", "options": {"n_words": 1}}, max_failures=2, budget=5)
    )
    final = _run(spec, sqlite_url, tmp_path)
    record = store.get_study(sqlite_url, spec.name)
    assert record.status == "failed" and "max_failures" in record.message
    failed = trials(sqlite_url, spec.name)
    failed = [t for t in failed if t.state != TrialState.WAITING]  # the unstarted arm
    assert [t.state for t in failed] == [TrialState.FAIL] * 2
    assert all("n_words=1" in t.user_attrs["failed_for"] for t in failed)
    assert final.done == 0 and final.last == "failed"
    assert store.lease_holder(sqlite_url, spec.name) is None


def test_cancel_stops_a_running_study(storage_url: str, tmp_path: Path, make_spec: Spec) -> None:
    spec = parse_spec(make_spec(budget=6, seeds=1))

    def cancel_after_two(p: Progress) -> None:
        if p.done == 2:
            assert store.request_cancel(storage_url, spec.name) == "cancelling"

    final = _run(spec, storage_url, tmp_path, on_progress=cancel_after_two)
    assert final.last == "cancelled"
    record = store.get_study(storage_url, spec.name)
    assert record.status == "cancelled" and record.message == "cancelled by request"
    assert states(storage_url, spec.name) == {"COMPLETE": 2, "WAITING": 1}
    assert store.request_cancel(storage_url, spec.name) == "cancelled"  # idempotent


def test_a_run_cut_short_by_cancel_is_not_a_completed_trial(
    tmp_path: Path, make_spec: Spec, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The inner run sees the cancel between PPO steps and stops early: its objective is
    of a shorter run than the others', so the trial must not count as completed."""
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    spec = parse_spec(make_spec(budget=6, seeds=1, control_arms=False))
    monkeypatch.setattr(inner, "CANCEL_POLL_S", 0.0)
    real = inner.make_task
    calls = {"n": 0}

    def cancel_during_the_third_run(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:
            store.request_cancel(url, spec.name)
        return real(*args, **kwargs)

    monkeypatch.setattr(inner, "make_task", cancel_during_the_third_run)
    _run(spec, url, tmp_path)
    assert store.get_study(url, spec.name).status == "cancelled"
    by_state = {t.number: t.state for t in trials(url, spec.name)}
    assert by_state[0] == by_state[1] == TrialState.COMPLETE
    assert by_state[2] == TrialState.FAIL
    assert len(by_state) == 3


class BatchExecutor(Executor):
    """Holds jobs until `slots` are running (or no more come), then finishes them together
    with a made-up objective: how a pool of parallel workers looks to the coordinator."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.pending: list[Job] = []
        self.submitted_since_wait = False
        self.batches: list[list[int]] = []

    def submit(self, fn: JobFn, job: Job) -> None:
        self.pending.append(job)
        self.submitted_since_wait = True

    def wait(self, timeout_s: float) -> list[Outcome]:
        full = len(self.pending) >= self.slots or not self.submitted_since_wait
        self.submitted_since_wait = False
        if not (full and self.pending):
            return []
        self.batches.append(sorted({j.trial_number for j in self.pending}))
        done, self.pending = self.pending, []
        return [Outcome(j, result=_made_up_result(j)) for j in done]

    def running(self) -> int:
        return len(self.pending)


def _made_up_result(job: InnerJob) -> InnerResult:
    weights = job.config.shaping.weights  # best inside the simplex, not at a vertex
    value = -((weights["uniform"] - 0.3) ** 2) - (weights["red"] - 0.5) ** 2
    curve = {0: {"eval/rm_mean": 0.0}, 4: {"eval/rm_mean": value}}
    return InnerResult(job.seed_index, host="test", value=value, curve=curve)


@pytest.mark.parametrize("sampler", ["random", "tpe", "gp"])
def test_trials_asked_together_get_different_params(
    tmp_path: Path, make_spec: Spec, sampler: str
) -> None:
    """Four workers take four trials at once: each must be a different proposal."""
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    spec = parse_spec(make_spec(budget=12, seeds=1, sampler=sampler, startup_trials=8))
    executor = BatchExecutor(slots=4)
    _run(spec, url, tmp_path, executor=executor)
    complete = {t.number: t for t in trials(url, spec.name) if t.state == TrialState.COMPLETE}
    assert len(complete) == 12
    assert max(len(b) for b in executor.batches) == 4  # trials really ran side by side
    for batch in executor.batches:
        together = [tuple(sorted(complete[n].params.items())) for n in batch]
        assert len(set(together)) == len(together), together
    seen = Counter(tuple(sorted(t.params.items())) for t in complete.values())
    assert [p for p, n in seen.items() if n > 1] == []


def test_status_json_reports_the_study(tmp_path: Path, make_spec: Spec) -> None:
    import json

    from typer.testing import CliRunner

    from service.cli import app

    spec = parse_spec(make_spec(budget=3, seeds=2))
    home = tmp_path / "home"
    url = f"sqlite:///{home / 'studies.db'}"
    _run(spec, url, home)
    result = CliRunner().invoke(app, ["status", spec.name, "--home", str(home), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["status"] == "completed" and report["done"] == report["budget"] == 3
    assert [t["label"] for t in report["trials"]] == ["pure sparse", "pure uniform", "pure red"]
    assert report["sparse"]["trial"] == 0
    values = {t["number"]: t["value"] for t in report["trials"]}
    assert values[report["best"]["trial"]] == max(values.values())


@pytest.mark.e2e
def test_the_median_pruner_stops_trials_behind_the_median_and_the_budget_still_completes(
    tmp_path: Path, make_spec: Spec
) -> None:
    inner = {**TINY_INNER_PRUNED, "steps": 6, "eval_interval": 1}
    spec = parse_spec(make_spec(budget=8, seeds=1, pruner="median", inner=inner, seed=1))
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    _run(spec, url, tmp_path)

    counted = Counter(t.state for t in trials(url, spec.name))
    assert counted[TrialState.COMPLETE] == 8  # pruned trials do not count toward the budget
    pruned = [t for t in trials(url, spec.name) if t.state == TrialState.PRUNED]
    assert pruned, "no trial was pruned: the test no longer exercises the pruner"
    complete = [t for t in trials(url, spec.name) if t.state == TrialState.COMPLETE]
    for t in pruned:
        last = max(t.intermediate_values)
        assert last < 6  # stopped before the end
        # MedianPruner: its best so far is below the median of finished trials at that step.
        earlier = [
            c.intermediate_values[last]
            for c in complete
            if c.number < t.number and last in c.intermediate_values
        ]
        best = max(t.intermediate_values.values())
        assert len(earlier) >= 5 and best < statistics.median(earlier)
        assert not t.user_attrs.get("sample_credits")  # cut short: nothing credited
