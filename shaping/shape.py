"""The shaped reward: a convex mix of per-method credits."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch


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


def shape_rewards(
    credits: Mapping[str, torch.Tensor], weights: Mapping[str, float]
) -> torch.Tensor:
    """r[t] = sum_k w_k * phi_k[t]: (B, T). Methods with weight 0 need no credits."""
    check_weights(weights)
    used = {k: w for k, w in weights.items() if w > 0}
    missing = sorted(set(used) - set(credits))
    if missing:
        raise ValueError(f"no credits computed for weighted method(s) {missing}")
    shapes = {tuple(credits[k].shape) for k in used}
    if len(shapes) != 1:
        raise ValueError(f"credits of different shapes cannot be mixed: {shapes}")
    rewards = sum(w * credits[k] for k, w in used.items())
    assert isinstance(rewards, torch.Tensor)
    if not bool(torch.isfinite(rewards).all()):
        raise ValueError("shaped rewards are not finite; a method returned NaN or inf credits")
    return rewards


def conservation_residual(credits: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """R - sum_t phi[t] per response, (B,): the prompt-only offset b(x) for a conserving method."""
    return scores - credits.sum(dim=1)
