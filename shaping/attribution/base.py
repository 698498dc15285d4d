"""The attributor interface: `attribute(batch) -> credits (B, T)` in reward units."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from typing import ClassVar

import torch

from shaping.batch import RolloutBatch
from shaping.scorer import RewardScorer


class Attributor(ABC):
    """One credit-assignment method.

    Credits are zero on response padding. An attributor that `conserves` guarantees
    `sum_t credits[i, t] == R_i - b(x_i)` with `b` a function of the prompt alone, which
    keeps the optimal policy unchanged. The time spent in `attribute`, RM forwards
    included, accumulates in `seconds`.
    """

    name: ClassVar[str]
    conserves: ClassVar[bool]

    def __init__(self, scorer: RewardScorer) -> None:
        self.scorer = scorer
        self.seconds = 0.0

    @torch.no_grad()
    def attribute(self, batch: RolloutBatch) -> torch.Tensor:
        started = time.perf_counter()
        credits = self._credits(batch)
        self.seconds += time.perf_counter() - started
        if credits.shape != batch.response_ids.shape:
            raise AssertionError(f"{self.name} returned {tuple(credits.shape)} credits")
        return credits * batch.response_mask

    @abstractmethod
    def _credits(self, batch: RolloutBatch) -> torch.Tensor: ...


def last_token(batch: RolloutBatch, values: torch.Tensor) -> torch.Tensor:
    """(B,) values placed on each response's last token: (B, T)."""
    out = torch.zeros(batch.response_ids.shape)
    out[torch.arange(batch.size), batch.lengths - 1] = values.float()
    return out
