"""R3HF / RED reward redistribution: r_t = r(x, y<=t) - r(x, y<t).

The sum telescopes to R - r(x, empty): potential-based shaping with Phi(s_t) = r(x, y<t).
A causal RM gives every prefix score from one forward pass (see `RewardScorer`).
`keep_offset` ("dynamic initialisation" off) adds r(x, empty) to the first token so the
credits sum to R itself.
"""

from __future__ import annotations

import torch

from shaping.attribution.base import Attributor
from shaping.batch import RolloutBatch
from shaping.scorer import RewardScorer


class RedAttributor(Attributor):
    name = "red"
    conserves = True

    def __init__(self, scorer: RewardScorer, keep_offset: bool = False) -> None:
        super().__init__(scorer)
        self.keep_offset = keep_offset

    def _credits(self, batch: RolloutBatch) -> torch.Tensor:
        credits = torch.zeros(batch.response_ids.shape)
        prefixes = self.scorer.prefix_values(batch)  # per response: (T_i + 1,)
        for i, values in enumerate(prefixes):
            T = values.shape[0] - 1
            # The full row's score is the batch's R: pin the last prefix to it so the sum
            # telescopes to R - r(x, empty) exactly, whatever the RM's numerics.
            values = values.clone()
            values[-1] = batch.scores[i]
            credits[i, :T] = values[1:] - values[:-1]
            if self.keep_offset:
                credits[i, 0] += values[0]
        return credits
