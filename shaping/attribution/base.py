"""The attributor interface: `attribute(batch) -> credits (B, T)` in reward units."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from typing import ClassVar

import torch

from shaping.align import RmView
from shaping.batch import RolloutBatch
from shaping.scorer import RewardScorer


class Attributor(ABC):
    """One credit-assignment method.

    Credits are zero on response padding and sum, per response, to `R - b(x)` with `b` a
    function of the prompt alone (`offsets`), which keeps the optimal policy unchanged.
    Methods that guarantee this by construction set `conserves`; the others (a regression's
    coefficients) are corrected to it, and the correction they needed, the pre-rescale
    residual, is kept in `residuals` as a diagnostic.

    `_credits` sees the batch in the reward model's tokens; the base class carries its
    credits back to the policy's tokens. Time spent in `attribute`, RM forwards included,
    accumulates in `seconds`.
    """

    name: ClassVar[str]
    conserves: ClassVar[bool]
    reads_rm: ClassVar[bool] = True
    """False for methods that need only the batch's scores: they stay in the policy's tokens."""

    def __init__(self, scorer: RewardScorer) -> None:
        self.scorer = scorer
        self.seconds = 0.0
        self.residuals: list[float] = []
        """Mean |pre-rescale residual| / (|R| + 1e-8) of each batch (non-conserving methods)."""

    @torch.no_grad()
    def attribute(self, batch: RolloutBatch) -> torch.Tensor:
        started = time.perf_counter()
        view = self.scorer.view(batch) if self.reads_rm else RmView(batch)
        credits = self._credits(view.batch)
        if credits.shape != view.batch.response_ids.shape:
            raise AssertionError(f"{self.name} returned {tuple(credits.shape)} credits")
        credits = credits * view.batch.response_mask
        if not self.conserves:
            target = view.batch.scores - self.offsets(view.batch)
            credits, residual = conserve(credits, target, view.batch.response_mask)
            scale = view.batch.scores.abs() + 1e-8
            self.residuals.append(float((residual.abs() / scale).mean()))
        credits = view.to_policy(credits) * batch.response_mask
        self.seconds += time.perf_counter() - started
        return credits

    @abstractmethod
    def _credits(self, batch: RolloutBatch) -> torch.Tensor: ...

    def offsets(self, batch: RolloutBatch) -> torch.Tensor:
        """b(x), (B,): what a non-conserving method's credits should leave out of R."""
        return torch.zeros(batch.size)

    def metrics(self) -> dict[str, float]:
        out = {f"cost/{self.name}_seconds": self.seconds}
        if self.residuals:
            out[f"shaping/{self.name}_conservation_residual"] = sum(self.residuals) / len(
                self.residuals
            )
        return out


def conserve(
    credits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Make each row of `credits` (B, T) sum to `target` (B,); also return the residual.

    The residual is added in proportion to |credit| (evenly where a row is all zero): the
    shape the method found survives, and unlike a multiplicative rescale nothing blows up
    when the credits happen to sum to about zero.
    """
    residual = target - credits.sum(dim=1)  # (B,)
    weight = credits.abs() * mask
    empty = weight.sum(dim=1, keepdim=True) == 0
    weight = torch.where(empty, mask.to(weight.dtype), weight)
    weight = weight / weight.sum(dim=1, keepdim=True)
    return credits + residual[:, None] * weight, residual


def last_token(batch: RolloutBatch, values: torch.Tensor) -> torch.Tensor:
    """(B,) values placed on each response's last token: (B, T)."""
    out = torch.zeros(batch.response_ids.shape)
    out[torch.arange(batch.size), batch.lengths - 1] = values.float()
    return out
