"""Sparse RLHF: the whole score on the last token."""

from __future__ import annotations

import torch

from shaping.attribution.base import Attributor, last_token
from shaping.batch import RolloutBatch


class SparseAttributor(Attributor):
    name = "sparse"
    conserves = True
    reads_rm = False

    def _credits(self, batch: RolloutBatch) -> torch.Tensor:
        return last_token(batch, batch.scores)
