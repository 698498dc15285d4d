"""The artifacts index on SQLite and PostgreSQL: a retried run replaces its rows; pages
come by trial, seed and kind."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from service.store.artifacts import page_artifacts, record_artifacts
from service.store.db import get_engine


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'studies.db'}"
    else:
        url = request.getfixturevalue("pg_databases")()
    get_engine(url)  # migrated
    return url


def _files(run: str, size: int) -> list[dict[str, object]]:
    return [
        {"kind": "checkpoint", "path": f"/runs/{run}/checkpoint.pt", "bytes": size},
        {"kind": "result", "path": f"/runs/{run}/result.json", "bytes": 10},
    ]


def test_a_retried_run_replaces_what_its_first_attempt_recorded(url: str) -> None:
    record_artifacts(url, "s", 1, 0, "worker-a", _files("a", 5 * 2**30))  # > 32-bit sizes
    record_artifacts(url, "s", 1, 0, "worker-b", _files("b", 7))
    rows, count = page_artifacts(url, "s")
    assert count == 2
    assert [(r.host, r.path, r.bytes) for r in rows] == [
        ("worker-b", "/runs/b/checkpoint.pt", 7),
        ("worker-b", "/runs/b/result.json", 10),
    ]


def test_pages_are_ordered_by_trial_seed_and_kind_and_filter_by_trial(url: str) -> None:
    for trial, seed in ((2, 1), (0, 0), (2, 0)):
        record_artifacts(url, "s", trial, seed, "h", _files(f"{trial}-{seed}", 1))
    record_artifacts(url, "other", 0, 0, "h", _files("other", 1))
    rows, count = page_artifacts(url, "s", offset=1, limit=3)
    assert count == 6
    assert [(r.trial_number, r.seed_index, r.kind) for r in rows] == [
        (0, 0, "result"),
        (2, 0, "checkpoint"),
        (2, 0, "result"),
    ]
    rows, count = page_artifacts(url, "s", trial=2)
    assert count == 4 and {r.trial_number for r in rows} == {2}
    assert page_artifacts(url, "nope") == ([], 0)


def test_a_retry_that_cannot_see_its_checkpoint_says_so(
    tmp_path: Path, make_spec: Callable[..., dict[str, Any]]
) -> None:
    """A run's checkpoint is indexed when first written; a retry on a node that cannot see it
    (no shared SHAPETUNE_HOME) fails naming the fix instead of starting again from step 0."""
    import shutil

    import optuna

    from service.executor import InlineExecutor
    from service.tuning.contracts import InnerJob
    from service.tuning.spec.model import parse_spec
    from service.tuning.study.inner import run_inner
    from service.tuning.study.loop import run_study

    url = f"sqlite:///{tmp_path / 'studies.db'}"
    spec = parse_spec(make_spec(methods=["sparse"], budget=1, seeds=1, control_arms=False))
    run_study(spec, url, tmp_path, InlineExecutor())
    (checkpoint,) = [a for a in page_artifacts(url, spec.name)[0] if a.kind == "checkpoint"]
    trial = optuna.load_study(study_name=spec.name, storage=url).trials[0]
    job = InnerJob(
        study=spec.name,
        storage=url,
        trial_id=trial._trial_id,
        trial_number=0,
        seed_index=0,
        config=spec.train_config({"sparse": 1.0}, {}, spec.seed, Path(checkpoint.path).parent),
        home=str(tmp_path),
        heartbeat_s=1.0,
        objective=spec.objective,
        target=None,
        pruner=None,
        seeds=1,
        credit=False,
    )
    seen = run_inner(job)  # the folder is here: it continues from the checkpoint
    assert seen.error is None and seen.resumed_from == spec.inner["steps"]
    shutil.rmtree(job.run_dir)  # as a node without the shared folder sees it
    lost = run_inner(job)
    assert lost.error is not None and "is not visible on" in lost.error, lost.error
    assert "mount SHAPETUNE_HOME at the same path on every node" in lost.error
