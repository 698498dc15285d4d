"""Pairing by seed: every arm of a study trains seed k with the same prompts and initial
draws and is evaluated with the same sampling noise, so what two arms share per seed cancels
in their difference. Pure functions over per-seed values."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Pooled:
    """A variance pooled over several samples' own, with its degrees of freedom."""

    variance: float
    dof: int


def paired(a: Sequence[float | None], b: Sequence[float | None]) -> list[float | None]:
    """Per-seed differences a - b over the seeds both ran (None where either is missing)."""
    return [None if x is None or y is None else x - y for x, y in zip(a, b, strict=False)]


def variance(values: Sequence[float]) -> float:
    """The sample variance (n - 1) of 2 or more values, in floats: `statistics.variance`
    sums in exact fractions, which cost a study of 10,000 trials most of a second a read."""
    mean = math.fsum(values) / len(values)
    return math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1)


def pool(samples: Sequence[Sequence[float]]) -> Pooled | None:
    """The pooled variance of the samples of 2 or more values (None without one)."""
    measured = [(len(s) - 1, variance(s)) for s in samples if len(s) >= 2]
    dof = sum(d for d, _ in measured)
    if not dof:
        return None
    return Pooled(sum(d * v for d, v in measured) / dof, dof)


def differences(
    arms: Sequence[Sequence[float]], baseline: Sequence[float]
) -> list[list[float] | None]:
    """Each arm's per-seed differences from `baseline`; None for an arm whose seeds do not
    pair with it (another count)."""
    return [
        [a - b for a, b in zip(arm, baseline, strict=True)] if len(arm) == len(baseline) else None
        for arm in arms
    ]
