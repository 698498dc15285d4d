"""The score spread evenly over the response: R / T on each token."""

from __future__ import annotations

import torch

from shaping.attribution.base import Attributor
from shaping.batch import RolloutBatch


class UniformAttributor(Attributor):
    name = "uniform"
    conserves = True
    reads_rm = False

    def _credits(self, batch: RolloutBatch) -> torch.Tensor:
        per_token = batch.scores / batch.lengths  # (B,)
        return per_token[:, None] * batch.response_mask  # (B, T)
