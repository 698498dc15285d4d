"""Studies and trials as the API shows them: pages of studies, one study with its incumbent
and control arms, pages of trials, one trial in full. Plain data; `service.api.schemas`
gives it its shape."""

from __future__ import annotations

from typing import Any

from optuna.trial import TrialState

from service.store import studies as store
from service.store.artifacts import page_artifacts
from service.store.models import StudyModel
from service.tuning.report import (
    artifacts,
    find_trial,
    sample_credits,
    study_report,
    study_trials,
    trial_row,
)
from service.tuning.spec import StudySpec


def submit(url: str, spec: StudySpec, owner: str) -> dict[str, Any]:
    """Record a study as queued (the coordinator picks it up) and return its summary."""
    record = store.create_study(url, spec.name, spec.stored(), owner)
    return _summary(record, done=0)


def study_page(
    url: str, status: str | None, owner: str | None, offset: int, limit: int
) -> dict[str, Any]:
    records, count = store.page_studies(url, status, offset, limit, owner)
    done = store.completed_counts(url, [r.name for r in records])
    return {"data": [_summary(r, done[r.name]) for r in records], "count": count}


def _summary(record: StudyModel, done: int) -> dict[str, Any]:
    return {
        "name": record.name,
        "status": record.status,
        "owner": record.owner,
        "message": record.message,
        "budget": record.spec["budget"],
        "done": done,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
    }


def study_detail(url: str, name: str) -> dict[str, Any]:
    record = store.get_study(url, name)
    report = study_report(url, name)
    states = [t["state"] for t in report["trials"]]
    by_number = report["trials_by_number"]
    lease = store.lease_holder(url, name)
    return {
        **_summary(record, report["done"]),
        "spec": record.spec,
        "running": states.count(TrialState.RUNNING.name),
        "failed": states.count(TrialState.FAIL.name),
        "coordinator": lease[0] if lease and lease[1] >= store.utcnow() else None,
        "best": _arm(by_number[report["best_trial"]]) if report["best_trial"] is not None else None,
        "sparse": _arm(report["sparse"]) if report["sparse"] else None,
        "control_arms": [_arm(t) for t in report["trials"] if t["label"]],
        "reevaluation": report["reevaluation"],
    }


def _arm(row: dict[str, Any]) -> dict[str, Any]:
    keys = ("label", "weights", "knobs", "value", "stderr", "seed_values", "state")
    return {"trial": row["number"], **{k: row[k] for k in keys}}


def trial_page(url: str, name: str, offset: int, limit: int) -> dict[str, Any]:
    store.get_study(url, name)  # a study unknown to the service is a 404, not an empty page
    trials = study_trials(url, name)  # cached: finished trials are read once per process
    return {"data": [trial_row(t) for t in trials[offset : offset + limit]], "count": len(trials)}


def trial_detail(url: str, name: str, number: int) -> dict[str, Any]:
    store.get_study(url, name)
    t = find_trial(url, name, number)
    final = t.user_attrs.get("final", {})
    return {
        **trial_row(t),
        "params": t.params,
        "curves": t.user_attrs.get("curves", []),
        "intermediate_values": t.intermediate_values,
        "final": final,
        "cost": {k: v for k, v in final.items() if k.startswith("cost/")},
        "samples": t.user_attrs.get("samples", []),
        **sample_credits(t),
        "artifacts": artifacts(url, name, number),
    }


def artifact_page(
    url: str, name: str, trial: int | None, offset: int, limit: int
) -> dict[str, Any]:
    store.get_study(url, name)
    rows, count = page_artifacts(url, name, trial, offset, limit)
    return {"data": rows, "count": count}
