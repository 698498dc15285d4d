"""What a person asks of a study: its trials, the incumbent, the control arms. Plain data,
for the CLI tables, the API and the dashboard alike."""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import FrozenTrial

from service.store import studies as store
from service.tuning.objective import direction
from service.tuning.storage import open_storage


def trial_row(t: FrozenTrial) -> dict[str, Any]:
    return {
        "number": t.number,
        "state": t.state.name,
        "label": t.user_attrs.get("label", ""),
        "weights": t.user_attrs.get("weights"),
        "knobs": t.user_attrs.get("knobs", {}),
        "value": t.value,
        "stderr": t.user_attrs.get("stderr"),
        "seed_values": t.user_attrs.get("seed_values", []),
        "failed_for": t.user_attrs.get("failed_for", ""),
        "started": t.datetime_start,
        "finished": t.datetime_complete,
    }


def study_report(url: str, name: str) -> dict[str, Any]:
    record = store.get_study(url, name)
    trials = _trials(url, name)
    rows = [trial_row(t) for t in trials]
    complete = [r for r in rows if r["state"] == "COMPLETE"]
    best = None
    if complete:
        sign = -1 if direction(record.spec.get("objective", "auc")) == "minimize" else 1
        best = max(complete, key=lambda r: sign * r["value"])["number"]
    sparse = next((r for r in complete if r["label"] == "pure sparse"), None)
    return {
        "name": name,
        "status": record.status,
        "message": record.message,
        "budget": record.spec["budget"],
        "done": len(complete),
        "best_trial": best,
        "sparse": sparse,
        "trials": rows,
        "trials_by_number": {r["number"]: r for r in rows},
    }


def _trials(url: str, name: str) -> list[FrozenTrial]:
    try:
        study = optuna.load_study(study_name=name, storage=open_storage(url))
    except KeyError:  # recorded by the service, not yet created in Optuna
        return []
    return study.get_trials(deepcopy=False)


def studies_overview(url: str) -> list[dict[str, Any]]:
    out = []
    for record in store.list_studies(url):
        report = study_report(url, record.name)
        best = (
            report["trials_by_number"].get(report["best_trial"])
            if report["best_trial"] is not None
            else None
        )
        out.append(
            {
                "name": record.name,
                "status": record.status,
                "done": report["done"],
                "budget": report["budget"],
                "best": best["value"] if best else None,
                "sparse": report["sparse"]["value"] if report["sparse"] else None,
                "coordinator": _coordinator(url, record.name, record.status),
            }
        )
    return out


def _coordinator(url: str, name: str, status: str) -> str:
    lease = store.lease_holder(url, name)
    if lease is None:
        return "-"
    holder, expires = lease
    if expires < store.utcnow():
        return f"lost ({holder}); `shapetune resume {name}`" if status == "running" else "-"
    return holder
