"""ABC, attention-based credit (Chan et al., ICML 2024, "Dense reward for free").

    r_t = beta * R * a_t + (1 - beta) * R * 1[t = T]

`a_t` is the RM's last-layer attention from its scoring position to response token t,
averaged over heads and renormalised over the response. Both terms sum to R, so the
credits conserve the return with b(x) = 0. `beta = 1` (the default) is the pure attention
shape; the paper's runs use 0.8, which mixes in the sparse reward as this file's own knob.
One RM row per response.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from shaping.attribution.base import Attributor, last_token
from shaping.attribution.options import Options, Real
from shaping.batch import RolloutBatch
from shaping.scorer import RewardScorer


class AttentionAttributor(Attributor):
    name = "attention"
    conserves = True
    options: ClassVar[Options] = {"beta": Real(0.0, 1.0, why="the attention share of R")}

    def __init__(self, scorer: RewardScorer, beta: float = 1.0) -> None:
        self.check_options(beta=beta)
        super().__init__(scorer)
        self.beta = beta

    def _credits(self, batch: RolloutBatch) -> torch.Tensor:
        a = torch.zeros(batch.response_ids.shape)
        for i, attention in enumerate(self.scorer.attention_values(batch)):
            total = attention.sum()
            # A response the RM does not attend to at all gets the uniform shape, not NaN.
            a[i, : attention.shape[0]] = (
                attention / total if total > 0 else 1.0 / attention.shape[0]
            )
        dense = batch.scores[:, None] * a  # (B, T)
        return self.beta * dense + (1 - self.beta) * last_token(batch, batch.scores)
