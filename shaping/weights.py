"""The mixing weights' rule, without torch: config admission checks weights before any
model exists."""

from __future__ import annotations

import math
from collections.abc import Mapping


def check_weights(
    weights: Mapping[str, float], known: set[str] | None = None, atol: float = 1e-6
) -> None:
    """Weights live on the simplex: non-negative, summing to 1, over known method names."""
    if not weights:
        raise ValueError("no shaping weights given; e.g. {'sparse': 1.0}")
    if known is not None:
        unknown = sorted(set(weights) - known)
        if unknown:
            raise ValueError(
                f"unknown method(s) {unknown} in the weights; choose from {sorted(known)}"
            )
    bad = {k: w for k, w in weights.items() if not math.isfinite(w) or w < 0}
    if bad:
        raise ValueError(f"weights must be finite and >= 0; got {bad}")
    total = sum(weights.values())
    if abs(total - 1.0) > atol:
        raise ValueError(
            f"weights must sum to 1 (a convex mix); they sum to {total:.6g}: {dict(weights)}"
        )
