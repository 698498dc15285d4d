"""Reward-hacking signals of a set of responses, and summaries of a learning curve."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence


def repeated_token_fraction(responses: Sequence[Sequence[int]]) -> float:
    """Mean over responses of the share of tokens that repeat an earlier token of the same
    response (0 for all-distinct tokens; near 1 for a policy stuck on one token)."""
    shares = [1.0 - len(set(r)) / len(r) for r in responses if r]
    return sum(shares) / len(shares) if shares else 0.0


def distinct_n(responses: Sequence[Sequence[int]], n: int) -> float:
    """Distinct n-grams / all n-grams over every response (Li et al. 2016, distinct-n)."""
    grams = [tuple(r[i : i + n]) for r in responses for i in range(len(r) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def area_under_curve(curve: Mapping[int, Mapping[str, float]], key: str) -> float:
    """Trapezoid area of `key` over steps, divided by the steps spanned: the curve's mean
    level over training, which rewards learning early as well as ending high."""
    points = sorted((step, m[key]) for step, m in curve.items() if key in m)
    if not points:
        return float("nan")
    if len(points) == 1:
        return points[0][1]
    area = sum((s1 - s0) * (v0 + v1) / 2 for (s0, v0), (s1, v1) in itertools.pairwise(points))
    return area / (points[-1][0] - points[0][0])
