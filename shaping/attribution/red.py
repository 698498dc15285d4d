"""R3HF / RED reward redistribution: r_t = r(x, y<=t) - r(x, y<t).

The sum telescopes to R - r(x, empty): potential-based shaping with Phi(s_t) = r(x, y<t).
A causal RM gives every prefix score from one forward pass (see `RewardScorer`).
`keep_offset` ("dynamic initialisation" off) adds r(x, empty) to the first token so the
credits sum to R itself.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from shaping.attribution.base import Attributor
from shaping.attribution.options import Flag, Options
from shaping.batch import RolloutBatch
from shaping.scorer import RewardScorer


class RedAttributor(Attributor):
    name = "red"
    conserves = True
    options: ClassVar[Options] = {"keep_offset": Flag()}

    def __init__(self, scorer: RewardScorer, keep_offset: bool = False) -> None:
        self.check_options(keep_offset=keep_offset)
        super().__init__(scorer)
        self.keep_offset = keep_offset

    def _credits(self, batch: RolloutBatch) -> torch.Tensor:
        credits = torch.zeros(batch.response_ids.shape)
        # Per response (T_i + 1,); the last is the batch's R, so the sum telescopes to
        # R - r(x, empty) exactly, whatever the RM's numerics.
        prefixes = self.scorer.prefix_values(batch)
        for i, values in enumerate(prefixes):
            T = values.shape[0] - 1
            credits[i, :T] = values[1:] - values[:-1]
            if self.keep_offset:
                credits[i, 0] += values[0]
        return credits
