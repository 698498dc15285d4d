"""The outer objective: one number per inner run, from its held-out reward curve."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
from optuna.trial import FrozenTrial

from trainers.signals import area_under_curve

CURVE_KEY = "eval/rm_mean"
GOLD_KEY = "eval/gold_mean"
"""The task's gold judge on the same held-out responses (a second objective)."""
KL_KEY = "eval/kl"
"""Held-out KL from the reference policy (what `constraints.kl_max` bounds)."""


def direction(objective: str) -> Literal["minimize", "maximize"]:
    return "minimize" if objective == "steps_to_target" else "maximize"


def directions(objective: str, objectives: Sequence[str]) -> list[Literal["minimize", "maximize"]]:
    """One per objective of the study: `objective`'s, then the gold judge's (higher is
    better) when `objectives` asks for it."""
    return [direction(objective)] + ["maximize" for name in objectives[1:] if name == "gold"]


def objective_value(
    objective: str,
    curve: Mapping[int, Mapping[str, float]],
    steps: int,
    target: float | None,
    key: str = CURVE_KEY,
) -> float:
    """auc: the curve's mean level over training (learning early counts); final: the last
    evaluation; steps_to_target: the first evaluated step at or above `target`, and twice
    the run's steps when it never gets there (worse than any run that does). Of the held-out
    RM reward, or of another evaluated `key` (GOLD_KEY for the gold objective)."""
    if objective == "auc":
        return area_under_curve(curve, key)
    points = sorted((step, m[key]) for step, m in curve.items() if key in m)
    if not points:
        raise ValueError(f"the run has no {key} evaluations")
    if objective == "final":
        return points[-1][1]
    if objective == "steps_to_target":
        assert target is not None
        return float(next((s for s, v in points if v >= target), 2 * steps))
    raise ValueError(f"unknown objective {objective!r}; choose auc, final or steps_to_target")


def primary(t: FrozenTrial) -> float | None:
    """The trial's value on the study's first objective (None until it is told)."""
    return None if t.values is None else float(t.values[0])


def is_feasible(t: FrozenTrial) -> bool:
    """Whether the trial keeps the spec's constraints (Optuna's convention: each <= 0)."""
    return all(c <= 0 for c in t.constraints.values())


def pareto_front(trials: Sequence[FrozenTrial], senses: Sequence[str]) -> list[FrozenTrial]:
    """The told trials no other trial dominates (at least as good on every objective, better
    on one), in the order given; `senses` are the objectives' directions."""
    sign = np.array([1.0 if d == "maximize" else -1.0 for d in senses])
    told = [t for t in trials if t.values is not None]
    if not told:
        return []
    points = sign * np.array([t.values for t in told], dtype=float)  # higher is better
    # One row of comparisons at a time: a study of 10,000 trials in a fraction of a second.
    return [
        t
        for t, p in zip(told, points, strict=True)
        if not ((points >= p).all(axis=1) & (points > p).any(axis=1)).any()
    ]


def kl_excess(kl_max: float, final: dict[str, float]) -> float:
    """The final held-out KL over `kl_max` (feasible when <= 0). A run that measured no KL
    cannot show it kept the limit: it counts as far over it."""
    kl = final.get(KL_KEY, math.nan)
    return kl - kl_max if math.isfinite(kl) else 1e9


def incumbent(complete: Sequence[FrozenTrial], objective: str) -> FrozenTrial | None:
    """The feasible completed trial with the best mean over its seeds on the first
    objective. With a second objective that is the Pareto-optimal feasible trial best on the
    first: the best on one objective is never dominated."""
    feasible = [t for t in complete if is_feasible(t)]
    if not feasible:
        return None
    pick = min if direction(objective) == "minimize" else max
    return pick(feasible, key=primary)  # type: ignore[arg-type]
