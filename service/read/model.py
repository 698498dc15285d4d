"""The one read model of a study: every function returns the API's schemas
(`service.read.schemas`), and the API, the dashboard and the CLI (locally, or through the API
with `--url`) all render those, so a study looks the same everywhere.

Trials are read through one long-lived Optuna study per process (`_study_trials`): Optuna
caches finished trials, so a page over a study of 10,000 trials costs one small query once
the first read is done. What reads derive from all of a study's trials (the incumbent, the
sparse control, the pooled paired spread, each finished trial's row and curve) is kept in a
`_Digest` until a trial is added or changes state: Optuna refuses writes to a finished trial,
so nothing else can change it.
"""

from __future__ import annotations

import statistics
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from functools import cache, cached_property
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from service.read import verdicts
from service.read.schemas import (
    Arm,
    Artifact,
    ArtifactsPublic,
    Reevaluation,
    StudiesPublic,
    StudyCurves,
    StudyPublic,
    StudySummary,
    TrialPublic,
    TrialsPublic,
    TrialSummary,
)
from service.store import studies as store
from service.store.artifacts import page_artifacts
from service.store.models import StudyModel, StudyStatus
from service.tuning.contracts import REEVALUATION, Curve, TrialRecord, own_complete, sparse_arm
from service.tuning.optuna_storage import open_storage
from service.tuning.search.objective import (
    CURVE_KEY,
    direction,
    directions,
    incumbent,
    is_feasible,
    pareto_front,
    primary,
)
from service.tuning.search.pairing import Pooled, differences, paired, pool
from service.tuning.study import verdict
from service.tuning.study.verdict import Estimate

IMPORTANCE_MIN_TRIALS = 10
"""Completed trials before parameter importance is shown."""
MAX_CURVE_POINTS = 100
"""Points kept per learning curve in what pages and the API send (first and last kept)."""


class TrialNotFound(store.StoreError):
    pass


def queued(url: str, record: StudyModel) -> StudySummary:
    """A study just recorded (`store.create_study`): no trial yet."""
    return _summary(url, record, None)


def studies(
    url: str,
    status: StudyStatus | None = None,
    owner: str | None = None,
    offset: int = 0,
    limit: int | None = None,
) -> StudiesPublic:
    """Studies, newest first (`limit` None: all of them)."""
    records, count = store.page_studies(url, status, offset, limit, owner)
    summaries = []
    for record in records:
        summaries.append(_summary(url, record, _digest(url, record)[1]))
    return StudiesPublic(data=summaries, count=count)


def study(url: str, name: str) -> StudyPublic:
    """A study: its progress, the incumbent, the control arms, the re-evaluation."""
    record = store.get_study(url, name)
    _, d = _digest(url, record)
    return StudyPublic(
        **_summary(url, record, d).model_dump(),
        spec=record.spec,
        direction=direction(record.spec.get("objective", "auc")),
        counts=d.counts,
        running=d.counts.get(TrialState.RUNNING.name, 0),
        failed=d.counts.get(TrialState.FAIL.name, 0),
        best=d.best_arm,
        sparse=d.sparse_arm,
        control_arms=d.control_arms,
        pareto_front=d.front,
        importance=d.importance,
        reevaluation=reevaluation(url, name),
    )


def trials(url: str, name: str, offset: int = 0, limit: int | None = None) -> TrialsPublic:
    """A study's trials in the order they started."""
    found, d = _digest(url, store.get_study(url, name))  # unknown: a 404, not an empty page
    end = None if limit is None else offset + limit
    return TrialsPublic(data=[d.summary(t) for t in found[offset:end]], count=len(found))


def trial(url: str, name: str, number: int) -> TrialPublic:
    """One trial in full: params, per-seed curves, final metrics and costs, samples."""
    found, d = _digest(url, store.get_study(url, name))
    t = _find(found, name, number)
    record = TrialRecord.from_trial(t)
    running = t.state in (TrialState.RUNNING, TrialState.WAITING)
    default_note = "the trial is still running" if running else "the trial recorded no samples"
    return TrialPublic(
        **d.summary(t).model_dump(),
        params=t.params,
        curves=[_downsample_seed(c) for c in record.curves],
        intermediate_values=t.intermediate_values,
        final={k: v for k, v in record.final.items() if not k.startswith("cost/")},
        cost={k: v for k, v in record.final.items() if k.startswith("cost/")},
        samples=record.samples,
        sample_credits=record.sample_credits,
        sample_credits_note=record.sample_credits_note
        or ("" if record.sample_credits else default_note),
        artifacts=artifacts(url, name, number).data,
        placements=record.placements,
    )


def curves(url: str, name: str) -> StudyCurves:
    """What plots of a whole study need: each trial's params, and its held-out reward curve
    (mean over seeds, at most MAX_CURVE_POINTS points) once it has finished."""
    found, d = _digest(url, store.get_study(url, name))
    unfinished = {t.number: t.params for t in found if not t.state.is_finished()}
    kept = d.curves
    if not unfinished:
        return kept
    return kept.model_copy(update={"params": dict(sorted({**kept.params, **unfinished}.items()))})


def artifacts(
    url: str, name: str, trial: int | None = None, offset: int = 0, limit: int = 1000
) -> ArtifactsPublic:
    """The files a study's inner runs (or one trial's) left on their workers."""
    store.get_study(url, name)
    rows, count = page_artifacts(url, name, trial, offset, limit)
    return ArtifactsPublic(data=[Artifact.model_validate(r) for r in rows], count=count)


def reevaluation(url: str, name: str) -> Reevaluation | None:
    """The study's latest race of its best shapes against sparse
    (`service.tuning.study.reevaluate`), its verdict in words."""
    found = _study(url, name)
    kept = None if found is None else found.user_attrs.get(REEVALUATION)
    if not isinstance(kept, dict):
        return None
    parsed = Reevaluation.model_validate(kept)
    if not parsed.outcome and parsed.difference is not None:  # kept before races
        parsed.difference = verdict.estimate(parsed.difference.values)
        decision = verdict.decide(parsed.difference, 0.0, direction(parsed.objective))
        parsed.outcome, parsed.more_seeds = decision.outcome, decision.more_seeds
    parsed.verdict = verdicts.sentence(parsed, direction(parsed.objective))
    return parsed


def _trial_summary(
    t: FrozenTrial, sparse: FrozenTrial | None = None, pooled: Pooled | None = None
) -> TrialSummary:
    """A trial's row; with the study's `sparse` control (and the paired spread `pooled`
    over its trials), its paired difference from it."""
    record = TrialRecord.from_trial(t)
    versus = None
    if sparse is not None and t.number != sparse.number and t.state == TrialState.COMPLETE:
        base = TrialRecord.from_trial(sparse).seed_values
        if len(base) == len(record.seed_values):
            versus = verdict.estimate(paired(record.seed_values, base), pooled=pooled)
    seconds = (
        (t.datetime_complete - t.datetime_start).total_seconds()
        if t.datetime_complete and t.datetime_start
        else None
    )
    return TrialSummary(
        **{name: getattr(record, name) for name in _RECORD_IN_ROW},
        number=t.number,
        state=t.state.name,
        # Optuna gives a pruned trial the reward at the step it was pruned at, which is not
        # its objective: shown as none, beside its steps.
        value=None if t.state == TrialState.PRUNED else primary(t),
        gold=statistics.fmean(record.gold_values) if record.gold_values else None,
        feasible=is_feasible(t),
        versus_sparse=versus,
        started=t.datetime_start,
        finished=t.datetime_complete,
        seconds=seconds,
    )


_RECORD_IN_ROW = sorted(set(TrialSummary.model_fields) & {f.name for f in fields(TrialRecord)})
"""What a trial's row shows of its record as the record keeps it (label, weights, knobs,
seed values, steps, why it failed or stopped, ...): named once, by the two types."""


def _summary(url: str, record: StudyModel, d: _Digest | None) -> StudySummary:
    """The study's row, from its digest (None: a study with no trial yet)."""
    holder, lost = _coordinator(url, record)
    best, sparse = (d.best, d.sparse) if d else (None, None)
    return StudySummary(
        name=record.name,
        status=StudyStatus(record.status),
        owner=record.owner,
        message=record.message,
        budget=record.spec.get("budget", 0),
        done=len(d.own) if d else 0,
        best_value=None if best is None else primary(best),
        sparse_value=None if sparse is None else primary(sparse),
        gain=d.gain if d else None,
        coordinator=holder,
        coordinator_lost=lost,
        created_at=record.created_at,
        updated_at=record.updated_at,
    )


def importance(spec: dict[str, Any], trials: Sequence[FrozenTrial]) -> dict[str, float]:
    """PED-ANOVA importance (Watanabe et al. 2023, Optuna's evaluator) of each parameter for
    the first objective, over the study's own completed trials: none before
    IMPORTANCE_MIN_TRIALS, whose best tenth (PED-ANOVA's top quantile) is then at least one
    trial."""
    own = own_complete(trials)
    if len(own) < IMPORTANCE_MIN_TRIALS:
        return {}
    # An in-memory copy scored on the first objective alone: the study may have two, and it
    # may hold warm-start copies measured by another study.
    scored = optuna.create_study(direction=direction(spec.get("objective", "auc")))
    scored.add_trials(
        [
            optuna.trial.create_trial(
                value=primary(t), params=t.params, distributions=t.distributions
            )
            for t in own
        ]
    )
    found = optuna.importance.get_param_importances(
        scored, evaluator=optuna.importance.PedAnovaImportanceEvaluator()
    )
    methods = spec.get("methods", [])
    return {_param_label(name, methods): float(v) for name, v in found.items()}


def _param_label(name: str, methods: Sequence[str]) -> str:
    """u<i> named with its method (the share of the weight left that method i takes)."""
    if name.startswith("u") and name[1:].isdigit() and int(name[1:]) < len(methods):
        return f"{name} ({methods[int(name[1:])]})"
    return name


def _pooled(own: Sequence[FrozenTrial], sparse: FrozenTrial | None) -> Pooled | None:
    """The variance of the completed trials' per-seed differences from the sparse control
    pooled over them (what a trial of 2 seeds borrows)."""
    if sparse is None:
        return None
    base = TrialRecord.from_trial(sparse).seed_values
    others = [TrialRecord.from_trial(t).seed_values for t in own if t is not sparse]
    return pool([d for d in differences(others, base) if d is not None])


_ARM_FIELDS = set(Arm.model_fields) & set(TrialSummary.model_fields)


@dataclass
class _Digest:
    """What reads derive from all of a study's trials, as of `stamp` (the trials' count by
    state): finished trials cannot change, so it holds until a trial is added or changes
    state. Its rows are shared: callers must not change them."""

    stamp: tuple[Any, ...]
    spec: dict[str, Any]
    finished: list[FrozenTrial]
    own: list[FrozenTrial]
    best: FrozenTrial | None
    sparse: FrozenTrial | None
    pooled: Pooled | None
    counts: dict[str, int]
    labelled: list[FrozenTrial]
    """The control arms' trials, finished or not."""
    _rows: dict[int, TrialSummary] = field(default_factory=dict)

    def summary(self, t: FrozenTrial) -> TrialSummary:
        """The trial's row; a finished trial's is built once."""
        if not t.state.is_finished():
            return _trial_summary(t, self.sparse, self.pooled)
        row = self._rows.get(t.number)
        if row is None:
            row = self._rows[t.number] = _trial_summary(t, self.sparse, self.pooled)
        return row

    def arm(self, t: FrozenTrial | None) -> Arm | None:
        """The trial's row as a point of comparison (the fields an `Arm` has)."""
        if t is None:
            return None
        return Arm(trial=t.number, **self.summary(t).model_dump(include=_ARM_FIELDS))

    @cached_property
    def control_arms(self) -> list[Arm]:
        return [a for t in self.labelled if (a := self.arm(t)) is not None]

    @cached_property
    def best_arm(self) -> Arm | None:
        return self.arm(self.best)

    @cached_property
    def sparse_arm(self) -> Arm | None:
        return self.arm(self.sparse)

    @cached_property
    def gain(self) -> Estimate | None:
        """The incumbent minus sparse, paired by seed (`verdicts.gain`)."""
        best, sparse = self.best_arm, self.sparse_arm
        return verdicts.gain(best, sparse, self.pooled) if best and sparse else None

    @cached_property
    def importance(self) -> dict[str, float]:
        """`importance` over the own trials: over a study of 1,000 it takes seconds, and a
        live study's page is read every few."""
        return importance(self.spec, self.own)

    @cached_property
    def front(self) -> list[int]:
        """With a second objective, the feasible own trials on the Pareto front."""
        objectives = self.spec.get("objectives") or []
        if len(objectives) < 2:
            return []
        senses = directions(self.spec.get("objective", "auc"), objectives)
        return [t.number for t in pareto_front([t for t in self.own if is_feasible(t)], senses)]

    @cached_property
    def curves(self) -> StudyCurves:
        """The finished trials' params and held-out reward curves (mean over seeds,
        downsampled), validated once: 10,000 trials' cost a second."""
        return StudyCurves(
            params={t.number: t.params for t in self.finished},
            curves={
                t.number: downsample(mean_curve(record.curves, CURVE_KEY))
                for t in self.finished
                if (record := TrialRecord.from_trial(t)).curves
            },
        )


_digests: dict[tuple[str, str], _Digest] = {}


def _digest(url: str, record: StudyModel) -> tuple[list[FrozenTrial], _Digest]:
    """The study's trials as read now, and its digest: kept while its stamp holds, else
    built afresh."""
    trials = _study_trials(url, record.name)
    counts = Counter(t.state.name for t in trials)
    objective = record.spec.get("objective", "auc")
    stamp = (objective, *sorted(counts.items()))
    kept = _digests.get((url, record.name))
    if kept is not None and kept.stamp == stamp:
        return trials, kept
    own = own_complete(trials)
    sparse = sparse_arm(own)
    made = _Digest(
        stamp=stamp,
        spec=record.spec,
        finished=[t for t in trials if t.state.is_finished()],
        own=own,
        best=incumbent(own, objective),
        sparse=sparse,
        pooled=_pooled(own, sparse),
        counts=dict(sorted(counts.items())),
        labelled=[t for t in trials if TrialRecord.from_trial(t).label],
    )
    _digests[(url, record.name)] = made
    return trials, made


def _coordinator(url: str, record: StudyModel) -> tuple[str | None, str | None]:
    """(who drives the study now, whose lease lapsed while it ran: a lost coordinator)."""
    lease = store.lease_holder(url, record.name)
    if lease is None:
        return None, None
    holder, expires = lease
    if expires >= store.utcnow():
        return holder, None
    return None, holder if record.status == StudyStatus.RUNNING else None


_loaded: dict[tuple[str, str], optuna.Study] = {}
_loading = threading.Lock()


@cache
def _storage(url: str) -> optuna.storages.RDBStorage:
    return open_storage(url)


def _study_trials(url: str, name: str) -> list[FrozenTrial]:
    """Every trial of the study, shared: callers must not change them."""
    found = _study(url, name)
    return [] if found is None else found.get_trials(deepcopy=False)


def _study(url: str, name: str) -> optuna.Study | None:
    with _loading:
        found = _loaded.get((url, name))
        if found is None:
            try:
                found = optuna.load_study(study_name=name, storage=_storage(url))
            except KeyError:  # recorded by the service, not yet created in Optuna
                return None
            _loaded[(url, name)] = found
    return found


def _find(trials: Sequence[FrozenTrial], name: str, number: int) -> FrozenTrial:
    """Trial `number` among a study's `trials`; `TrialNotFound` if it has none."""
    # Optuna numbers a study's trials from 0 in order: the number is the place.
    if 0 <= number < len(trials) and trials[number].number == number:
        return trials[number]
    found = next((t for t in trials if t.number == number), None)
    if found is None:
        raise TrialNotFound(
            f"study {name!r} has no trial {number} (`shapetune status {name}` lists them)"
        )
    return found


def mean_curve(curves: Sequence[Curve], key: str) -> list[tuple[int, float]]:
    """(step, mean over the seeds that evaluated `key` at that step), by step."""
    by_step: dict[int, list[float]] = {}
    for seed_curve in curves:
        for step, metrics in seed_curve.items():
            if key in metrics:
                by_step.setdefault(step, []).append(float(metrics[key]))
    return [(s, statistics.fmean(v)) for s, v in sorted(by_step.items())]


def _downsample_seed(curve: Curve) -> Curve:
    return dict(downsample(sorted(curve.items())))


def downsample(points: Sequence[Any], n: int = MAX_CURVE_POINTS) -> list[Any]:
    """At most `n` of `points`, evenly spaced, the first and the last always kept."""
    if len(points) <= n:
        return list(points)
    last = len(points) - 1
    return [points[round(i * last / (n - 1))] for i in range(n)]
