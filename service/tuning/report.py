"""What a person asks of a study: its trials, the incumbent, the control arms. Plain data,
for the CLI tables, the API and the dashboard alike."""

from __future__ import annotations

import statistics
import threading
from collections.abc import Sequence
from functools import cache
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from service.store import studies as store
from service.store.artifacts import page_artifacts
from service.store.models import StudyModel
from service.tuning.objective import CURVE_KEY, direction
from service.tuning.storage import open_storage

REEVALUATION = "reevaluation"
"""The study user attribute that keeps the latest re-evaluation of the incumbent."""
MAX_CURVE_POINTS = 100
"""Points kept per learning curve in what pages and the API send (first and last kept)."""


class TrialNotFound(store.StoreError):
    pass


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
        "stopped_for": t.user_attrs.get("stopped_for", ""),
        "started": t.datetime_start,
        "finished": t.datetime_complete,
    }


def study_report(url: str, name: str) -> dict[str, Any]:
    record = store.get_study(url, name)
    return {**_report(record, study_trials(url, name)), "reevaluation": reevaluation(url, name)}


def _report(record: StudyModel, trials: Sequence[FrozenTrial]) -> dict[str, Any]:
    rows = [trial_row(t) for t in trials]
    complete = [r for r in rows if r["state"] == "COMPLETE"]
    best = None
    if complete:
        sign = -1 if direction(record.spec.get("objective", "auc")) == "minimize" else 1
        best = max(complete, key=lambda r: sign * r["value"])["number"]
    sparse = next((r for r in complete if r["label"] == "pure sparse"), None)
    return {
        "name": record.name,
        "status": record.status,
        "message": record.message,
        "budget": record.spec["budget"],
        "done": len(complete),
        "best_trial": best,
        "sparse": sparse,
        "trials": rows,
        "trials_by_number": {r["number"]: r for r in rows},
    }


_loaded: dict[tuple[str, str], optuna.Study] = {}
_loading = threading.Lock()


@cache
def _storage(url: str) -> optuna.storages.RDBStorage:
    return open_storage(url)


def study_trials(url: str, name: str) -> list[FrozenTrial]:
    """Every trial of the study, read through one long-lived Optuna study per process.

    Optuna caches finished trials (they never change again) and re-reads only new and
    unfinished ones, so a page or an endpoint over a study of 1,000 trials costs one small
    query once the first read is done. The trials are shared: callers must not change them.
    """
    study = _study(url, name)
    return [] if study is None else study.get_trials(deepcopy=False)


def _study(url: str, name: str) -> optuna.Study | None:
    with _loading:
        study = _loaded.get((url, name))
        if study is None:
            try:
                study = optuna.load_study(study_name=name, storage=_storage(url))
            except KeyError:  # recorded by the service, not yet created in Optuna
                return None
            _loaded[(url, name)] = study
    return study


def reevaluation(url: str, name: str) -> dict[str, Any] | None:
    """The study's latest re-evaluation of its incumbent (`service.tuning.reevaluate`)."""
    study = _study(url, name)
    found = None if study is None else study.user_attrs.get(REEVALUATION)
    return found if isinstance(found, dict) else None


def find_trial(url: str, name: str, number: int) -> FrozenTrial:
    """Trial `number` of a study the service knows; `TrialNotFound` if it has none."""
    trial = next((t for t in study_trials(url, name) if t.number == number), None)
    if trial is None:
        raise TrialNotFound(
            f"study {name!r} has no trial {number} (`shapetune status {name}` lists them)"
        )
    return trial


def studies_overview(url: str) -> list[dict[str, Any]]:
    out = []
    for record in store.list_studies(url):
        report = _report(record, study_trials(url, record.name))
        best = (
            report["trials_by_number"].get(report["best_trial"])
            if report["best_trial"] is not None
            else None
        )
        out.append(
            {
                "name": record.name,
                "status": record.status,
                "owner": record.owner,
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


def study_detail(url: str, name: str) -> dict[str, Any]:
    """`study_report` and what plots of the study need, from one read of its trials: the
    spec, each trial's params, the held-out reward curve of each trial (mean over seeds,
    at most MAX_CURVE_POINTS points), and the trial counts by state."""
    record = store.get_study(url, name)
    trials = study_trials(url, name)
    report = _report(record, trials)
    states = [t.state.name for t in trials]
    return {
        **report,
        "owner": record.owner,
        "spec": record.spec,
        "direction": direction(record.spec.get("objective", "auc")),
        "updated": record.updated_at,
        "counts": {s: states.count(s) for s in sorted(set(states))},
        "reevaluation": reevaluation(url, name),
        "params": {t.number: t.params for t in trials},
        "curves": {
            t.number: downsample(mean_curve(t.user_attrs.get("curves", []), CURVE_KEY))
            for t in trials
            if t.user_attrs.get("curves")
        },
    }


def trial_report(url: str, name: str, number: int) -> dict[str, Any]:
    """One trial whole: `trial_row` plus params, per-seed curves of every recorded metric
    (at most MAX_CURVE_POINTS points each), final metrics, costs and sample responses."""
    record = store.get_study(url, name)
    trial = find_trial(url, name, number)
    final: dict[str, float] = trial.user_attrs.get("final", {})
    curves = []
    for seed_curve in trial.user_attrs.get("curves", []):
        steps = downsample(sorted((int(s), m) for s, m in seed_curve.items()))
        keys = sorted({k for _, m in steps for k in m})
        curves.append({k: [(s, m[k]) for s, m in steps if k in m] for k in keys})
    seconds = (
        (trial.datetime_complete - trial.datetime_start).total_seconds()
        if trial.datetime_complete and trial.datetime_start
        else None
    )
    return {
        **trial_row(trial),
        "study": name,
        "spec": record.spec,
        "status": record.status,
        "params": trial.params,
        "curves": curves,
        "final": {k: v for k, v in final.items() if not k.startswith("cost/")},
        "cost": {k: v for k, v in final.items() if k.startswith("cost/")},
        "samples": trial.user_attrs.get("samples", []),
        **sample_credits(trial),
        "artifacts": artifacts(url, name, number),
        "seconds": seconds,
    }


def artifacts(
    url: str, name: str, trial: int | None = None, offset: int = 0, limit: int = 1000
) -> list[dict[str, Any]]:
    """The files a study's inner runs (or one trial's) left on their workers."""
    keys = ("trial_number", "seed_index", "kind", "host", "path", "bytes", "created_at")
    rows, _ = page_artifacts(url, name, trial, offset, limit)
    return [{k: getattr(r, k) for k in keys} for r in rows]


def sample_credits(t: FrozenTrial) -> dict[str, Any]:
    """The trial's credited samples (`service.tuning.credits`), or a note saying why none."""
    running = t.state in (TrialState.RUNNING, TrialState.WAITING)
    return {
        "sample_credits": t.user_attrs.get("sample_credits", []),
        "sample_credits_note": t.user_attrs.get(
            "sample_credits_note",
            "the trial is still running" if running else "the trial recorded no samples",
        ),
    }


def mean_curve(curves: Sequence[dict[str, dict[str, float]]], key: str) -> list[tuple[int, float]]:
    """(step, mean over the seeds that evaluated `key` at that step), by step."""
    by_step: dict[int, list[float]] = {}
    for seed_curve in curves:
        for step, metrics in seed_curve.items():
            if key in metrics:
                by_step.setdefault(int(step), []).append(float(metrics[key]))
    return [(s, statistics.fmean(v)) for s, v in sorted(by_step.items())]


def downsample(points: Sequence[Any], n: int = MAX_CURVE_POINTS) -> list[Any]:
    """At most `n` of `points`, evenly spaced, the first and the last always kept."""
    if len(points) <= n:
        return list(points)
    last = len(points) - 1
    return [points[round(i * last / (n - 1))] for i in range(n)]
