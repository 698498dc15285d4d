"""The coordinator lease, on SQLite and PostgreSQL: one holder at a time, a lapsed lease is
taken over, and a refused coordinator is told who holds the study."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import optuna
import pytest
from sqlalchemy import update

from service.executor import InlineExecutor
from service.store import studies as store
from service.store.db import session_scope
from service.store.models import LeaseModel
from service.tuning.spec.model import parse_spec
from service.tuning.study.loop import LeaseLost, Progress, StudyBusy, Timing, run_study

FAST = Timing(heartbeat=1, grace=3, lease=1.5, poll=0.2)
Spec = Callable[..., dict[str, Any]]


def test_a_lease_has_one_holder_at_a_time(storage_url: str, study_name: str) -> None:
    assert store.lease_holder(storage_url, study_name) is None
    assert store.acquire_lease(storage_url, study_name, "a", 60)
    assert not store.acquire_lease(storage_url, study_name, "b", 60)
    assert store.acquire_lease(storage_url, study_name, "a", 60)  # renewed
    holder, expires = store.lease_holder(storage_url, study_name)  # type: ignore[misc]
    assert holder == "a" and expires > store.utcnow() + timedelta(seconds=50)
    store.release_lease(storage_url, study_name, "b")  # not b's to release
    assert store.lease_holder(storage_url, study_name) is not None
    store.release_lease(storage_url, study_name, "a")
    assert store.lease_holder(storage_url, study_name) is None
    assert store.acquire_lease(storage_url, study_name, "b", 60)


def test_a_lapsed_lease_is_taken_over(storage_url: str, study_name: str) -> None:
    assert store.acquire_lease(storage_url, study_name, "a", 0.2)
    time.sleep(0.4)
    assert store.acquire_lease(storage_url, study_name, "b", 60)
    assert not store.acquire_lease(storage_url, study_name, "a", 60)  # a has lost it
    assert store.lease_holder(storage_url, study_name)[0] == "b"  # type: ignore[index]


@pytest.mark.parametrize("lapsed", [False, True], ids=["first lease", "lapsed lease"])
def test_racing_coordinators_one_wins(storage_url: str, study_name: str, lapsed: bool) -> None:
    if lapsed:
        assert store.acquire_lease(storage_url, study_name, "dead", 0.1)
        time.sleep(0.3)
    start = threading.Barrier(8)
    won: dict[str, bool] = {}

    def race(holder: str) -> None:
        start.wait()
        won[holder] = store.acquire_lease(storage_url, study_name, holder, 60)

    threads = [threading.Thread(target=race, args=(f"c{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [h for h, ok in won.items() if ok]
    assert len(won) == 8 and len(winners) == 1, won
    assert store.lease_holder(storage_url, study_name)[0] == winners[0]  # type: ignore[index]


def test_a_second_coordinator_is_refused_with_the_holder_named(
    storage_url: str, tmp_path: Path, make_spec: Spec
) -> None:
    spec = parse_spec(make_spec(budget=1, seeds=1))
    assert store.acquire_lease(storage_url, spec.name, "host-a:4242:cafe", 60)
    with pytest.raises(StudyBusy, match="coordinated by host-a:4242:cafe"):
        run_study(spec, storage_url, tmp_path, InlineExecutor(), timing=FAST, holder="b")
    assert store.lease_holder(storage_url, spec.name)[0] == "host-a:4242:cafe"  # type: ignore[index]
    with pytest.raises(KeyError):  # refused before the Optuna study was made
        optuna.load_study(study_name=spec.name, storage=storage_url)


def test_two_coordinators_cannot_run_one_study(
    tmp_path: Path, make_spec: Spec, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While one coordinator runs a study, a second one started on it is refused."""
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    spec = parse_spec(make_spec(budget=2, seeds=1))
    refused: list[BaseException] = []

    def second_coordinator(p: Progress) -> None:
        if p.done == 1:
            with pytest.raises(StudyBusy) as busy:
                run_study(spec, url, tmp_path, InlineExecutor(), timing=FAST, holder="second")
            refused.append(busy.value)

    final = run_study(
        spec,
        url,
        tmp_path,
        InlineExecutor(),
        timing=FAST,
        holder="first",
        on_progress=second_coordinator,
    )
    assert len(refused) == 1 and "coordinated by first" in str(refused[0])
    assert final.done == 2 and store.get_study(url, spec.name).status == "completed"


def test_a_coordinator_takes_over_a_lapsed_lease(
    storage_url: str, tmp_path: Path, make_spec: Spec
) -> None:
    spec = parse_spec(make_spec(budget=1, seeds=1))
    assert store.acquire_lease(storage_url, spec.name, "dead-coordinator", 0.1)
    time.sleep(0.3)
    final = run_study(spec, storage_url, tmp_path, InlineExecutor(), timing=FAST, holder="new")
    assert final.done == 1
    assert store.lease_holder(storage_url, spec.name) is None  # released at the end


def test_a_coordinator_whose_lease_is_taken_stops(tmp_path: Path, make_spec: Spec) -> None:
    """Its renewal fails once another holds the lease; it stops touching the study and
    leaves the status to the new holder."""
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    spec = parse_spec(make_spec(budget=20, seeds=1))

    def steal(p: Progress) -> None:
        if p.done == 1:
            with session_scope(url) as s:
                s.execute(
                    update(LeaseModel)
                    .where(LeaseModel.study_name == spec.name)
                    .values(holder="thief", expires_at=store.utcnow() + timedelta(minutes=5))
                )

    with pytest.raises(LeaseLost):
        run_study(
            spec, url, tmp_path, InlineExecutor(), timing=FAST, holder="first", on_progress=steal
        )
    assert store.lease_holder(url, spec.name)[0] == "thief"  # type: ignore[index]
    assert store.get_study(url, spec.name).status == "running"  # not marked interrupted
    done = optuna.load_study(study_name=spec.name, storage=url).get_trials()
    assert len(done) < 20
