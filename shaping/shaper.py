"""Shaper: the credits of every weighted method, mixed into per-token rewards.

This is step "compute rewards" of a PPO iteration: `rewards = shaper(batch)`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from shaping.attribution import ATTRIBUTORS, build_attributor
from shaping.attribution.base import Attributor
from shaping.batch import RolloutBatch
from shaping.scorer import RewardScorer
from shaping.shape import conservation_residual, shape_rewards
from shaping.weights import check_weights


class Shaper:
    """Methods with weight 0 are never built, so they cost no reward-model rows."""

    def __init__(
        self,
        scorer: RewardScorer,
        weights: Mapping[str, float],
        options: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        check_weights(weights, known=set(ATTRIBUTORS))
        options = options or {}
        unknown = sorted(set(options) - set(ATTRIBUTORS))
        if unknown:
            raise ValueError(
                f"options given for unknown method(s) {unknown}; choose from {sorted(ATTRIBUTORS)}"
            )
        self.scorer = scorer
        self.weights = {k: float(w) for k, w in weights.items() if w > 0}
        self.attributors: dict[str, Attributor] = {
            k: build_attributor(k, scorer, options) for k in self.weights
        }
        self.last_offsets = torch.zeros(0)
        """R - sum_t rewards[t] of the last batch: the prompt-only term the shaping removed."""

    def __call__(self, batch: RolloutBatch) -> torch.Tensor:
        """(B, T) shaped rewards, before PPO's KL penalty."""
        credits = {name: a.attribute(batch) for name, a in self.attributors.items()}
        rewards = shape_rewards(credits, self.weights)
        self.last_offsets = conservation_residual(rewards, batch.scores)
        return rewards

    def metrics(self) -> dict[str, float]:
        out = self.scorer.stats.as_metrics()
        for a in self.attributors.values():
            out.update(a.metrics())
        out["cost/attribution_seconds"] = sum(a.seconds for a in self.attributors.values())
        return out
