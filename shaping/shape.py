"""The shaped reward: a convex mix of per-method credits."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from shaping.weights import check_weights


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
