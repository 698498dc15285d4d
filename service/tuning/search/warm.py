"""Warm starts: a new study's sampler seeded with the completed trials of earlier studies.

An earlier study is comparable when it searched the same space for the same objective:
the same task, methods in the same order (they name the stick-breaking coordinates), knobs
and their ranges, objective(s) and target. Its completed trials are copied into the new
study (Optuna `add_trials`) marked `warm_start`: the sampler learns from them, but they
were measured under another study's inner settings, so they do not count toward the budget
and are never the incumbent. A control arm measured with the same inner settings, seeds and
seed is the same measurement this study would make: it is copied as this study's own
(`reused_from`) and not run again, unless the spec asks for `rerun_control_arms`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from service.redaction import safe_url
from service.store import studies as store
from service.store.db import sqlite_path
from service.tuning.contracts import TrialRecord, own_complete
from service.tuning.optuna_storage import opened_storage
from service.tuning.search.objective import kl_excess
from service.tuning.spec.model import SpecError, StudySpec, parse_spec

SEARCH = ("task", "methods", "knobs", "objective", "target", "objectives")
"""Spec fields that must match for trials to mean the same point and the same value."""
MEASUREMENT = ("inner", "seeds", "seed")
"""With these equal too, a trial's measurement is the one this study would make."""


@dataclass(frozen=True)
class WarmSource:
    name: str
    same_runs: bool
    """Measured with this study's inner settings, seeds and seed: its arms can be reused."""
    trials: list[FrozenTrial]
    """Its own completed trials."""


def check_warm_start(spec: StudySpec, url: str) -> list[WarmSource]:
    """The spec's warm-start studies, read from `url`; a `SpecError` naming every one that
    is missing or not comparable (and the difference), before anything is written."""
    problems: list[str] = []
    sources = []
    mine = spec.stored()
    path = sqlite_path(url)
    no_database = path is not None and not path.is_file()  # asking would create one
    for name in spec.warm_start:
        try:
            if no_database:
                raise store.StudyNotFound(name)
            earlier = _stored_spec(url, name)
        except store.StudyNotFound:
            problems.append(
                f"warm_start: no study {name!r} in {safe_url(url)} (`shapetune status` lists "
                "them); remove it from warm_start"
            )
            continue
        differ = [
            f"{f} {earlier.get(f)!r} there, {mine[f]!r} here"
            for f in SEARCH
            if earlier.get(f) != mine[f]
        ]
        if differ:
            problems.append(
                f"warm_start: study {name!r} is not comparable ({'; '.join(differ)}): a warm "
                "start needs the same task, methods (in order), knobs, objective(s) and "
                f"target; remove {name!r} from warm_start"
            )
            continue
        same_runs = all(earlier.get(f) == mine[f] for f in MEASUREMENT)
        sources.append(WarmSource(name, same_runs, _own_trials(url, name)))
    if problems:
        raise SpecError(problems)
    return sources


def _stored_spec(url: str, name: str) -> dict[str, Any]:
    """A study's spec as this version stores it (defaults of fields added since filled in)."""
    stored = store.get_study(url, name).spec
    try:
        return parse_spec(stored).stored()
    except SpecError:  # a spec this version refuses: compare it as it was kept
        return stored


def _own_trials(url: str, name: str) -> list[FrozenTrial]:
    with opened_storage(url) as storage:
        try:
            study = optuna.load_study(study_name=name, storage=storage)
        except KeyError:  # queued, never started: nothing measured yet
            return []
        return own_complete(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def warm_copies(spec: StudySpec, sources: list[WarmSource]) -> tuple[list[FrozenTrial], set[str]]:
    """The trials to add to the new study, and the labels of the control arms among them
    that it takes as its own (those it must not queue again)."""
    copies, reused = [], set()
    for source in sources:
        for t in source.trials:
            label = TrialRecord.from_trial(t).label
            reuse = (
                bool(label)
                and spec.control_arms
                and source.same_runs
                and not spec.rerun_control_arms
                and label not in reused
            )
            if reuse:
                reused.add(label)
            copies.append(_copy(t, f"{source.name}#{t.number}", reuse, spec))
    return copies, reused


def _copy(t: FrozenTrial, origin: str, reuse: bool, spec: StudySpec) -> FrozenTrial:
    record = TrialRecord.from_trial(t)
    # Not reused: no label, so that it never stands in for this study's own control arm.
    kept = replace(
        record,
        label=record.label if reuse else "",
        warm_start="" if reuse else origin,
        reused_from=origin if reuse else "",
    )
    # Constraints as this study states them (the earlier study may have had none), under the
    # key Optuna's samplers read; intermediate values stay behind: this study's pruner
    # judges its own runs only.
    system_attrs = (
        {"constraints:kl_max": kl_excess(spec.constraints.kl_max, record.final)}
        if spec.constraints
        else {}
    )
    return optuna.create_trial(
        state=TrialState.COMPLETE,
        values=t.values,
        params=t.params,
        distributions=t.distributions,
        user_attrs=kept.to_user_attrs(),
        system_attrs=system_attrs,
    )
