"""The outer objective: one number per inner run, from its held-out reward curve."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from trainers.signals import area_under_curve

CURVE_KEY = "eval/rm_mean"


def direction(objective: str) -> Literal["minimize", "maximize"]:
    return "minimize" if objective == "steps_to_target" else "maximize"


def objective_value(
    objective: str, curve: Mapping[int, Mapping[str, float]], steps: int, target: float | None
) -> float:
    """auc: the curve's mean level over training (learning early counts); final: the last
    evaluation; steps_to_target: the first evaluated step at or above `target`, and twice
    the run's steps when it never gets there (worse than any run that does)."""
    if objective == "auc":
        return area_under_curve(curve, CURVE_KEY)
    points = sorted((step, m[CURVE_KEY]) for step, m in curve.items() if CURVE_KEY in m)
    if not points:
        raise ValueError(f"the run has no {CURVE_KEY} evaluations")
    if objective == "final":
        return points[-1][1]
    if objective == "steps_to_target":
        assert target is not None
        return float(next((s for s, v in points if v >= target), 2 * steps))
    raise ValueError(f"unknown objective {objective!r}; choose auc, final or steps_to_target")
