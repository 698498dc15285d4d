"""The attributor interface: `attribute(batch) -> credits (B, T)` in reward units."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from shaping.align import RmView
from shaping.attribution.options import MethodOptionError, Options, option_problems
from shaping.batch import RolloutBatch
from shaping.scorer import NonFiniteRewardError, RewardScorer


class Attributor(ABC):
    """One credit-assignment method.

    Credits are zero on response padding and sum, per response, to `R - b(x)` with `b` a
    function of the prompt alone (`offsets`), which keeps the optimal policy unchanged.
    Methods that guarantee this by construction set `conserves`; the others (a regression's
    coefficients) are corrected to it, and the correction they needed, the pre-rescale
    residual, is kept in `residuals` as a diagnostic.

    `_credits` sees the batch in the reward model's tokens; the base class carries its
    credits back to the policy's tokens. Time spent in `attribute`, RM forwards included,
    accumulates in `seconds`. A NaN or inf score, the batch's or the RM's, raises
    `NonFiniteRewardError` naming the response and the method.

    The constructor's keywords are the method's options: declared in `options`, and checked
    by `check_options` in the constructor (and in config admission, before any RM exists).
    """

    name: ClassVar[str]
    conserves: ClassVar[bool]
    reads_rm: ClassVar[bool] = True
    """False for methods that need only the batch's scores: they stay in the policy's tokens."""
    options: ClassVar[Options] = {}
    """Each constructor keyword after `scorer`, and the values it may take."""
    learns: ClassVar[bool] = False
    """True for a method trained as the run goes (`amortized`): its credits depend on the
    state it learned, which a run's checkpoint keeps (`state`)."""

    def __init__(self, scorer: RewardScorer) -> None:
        self.scorer = scorer
        self.seconds = 0.0
        self.frozen = False
        self.residuals: list[float] = []
        """Mean |pre-rescale residual| / (|R| + 1e-8) of each batch (non-conserving methods)."""

    @classmethod
    def check_options(cls, **options: Any) -> None:
        """Refuse unknown options and invalid values, naming every bad one."""
        problems = option_problems(cls.name, cls.options, options)
        if problems:
            raise MethodOptionError(problems)

    @torch.no_grad()
    def attribute(self, batch: RolloutBatch) -> torch.Tensor:
        started = time.perf_counter()
        try:
            self.scorer.check_scores(batch)
            credits = self._attribute(batch)
        except NonFiniteRewardError as e:  # raised by the scorer, which cannot know who asked
            raise e.asked_by(self.name) from None
        self.seconds += time.perf_counter() - started
        return credits

    def _attribute(self, batch: RolloutBatch) -> torch.Tensor:
        """`attribute`'s work: credits in the RM's tokens, back in the policy's."""
        view = self.scorer.view(batch) if self.reads_rm else RmView(batch)
        return view.to_policy(self.rm_credits(view.batch)) * batch.response_mask

    def rm_credits(self, batch: RolloutBatch) -> torch.Tensor:
        """Conserved credits (B, T) of a batch already in the RM's tokens (`scorer.view`);
        uncounted in `seconds` (`amortized` asks its teacher for these)."""
        credits = self._credits(batch)
        if credits.shape != batch.response_ids.shape:
            raise AssertionError(f"{self.name} returned {tuple(credits.shape)} credits")
        credits = credits * batch.response_mask
        if not self.conserves:
            target = batch.scores - self.offsets(batch)
            credits, residual = conserve(credits, target, batch.response_mask)
            scale = batch.scores.abs() + 1e-8
            self.residuals.append(float((residual.abs() / scale).mean()))
        return credits

    @abstractmethod
    def _credits(self, batch: RolloutBatch) -> torch.Tensor: ...

    def offsets(self, batch: RolloutBatch) -> torch.Tensor:
        """b(x), (B,): what a non-conserving method's credits should leave out of R."""
        return torch.zeros(batch.size)

    def freeze(self) -> None:
        """Credit with what the method has learned, learning no more (a trained `amortized`
        explaining one response); methods that learn nothing credit as ever."""
        self.frozen = True

    def state(self) -> dict[str, Any]:
        """What a resumed run needs to draw what the uninterrupted one would have: the torch
        generators the method holds, by attribute. Methods with more state add theirs."""
        return {k: v.get_state() for k, v in vars(self).items() if isinstance(v, torch.Generator)}

    def load_state(self, state: Mapping[str, Any]) -> None:
        for key, value in state.items():
            if isinstance(generator := vars(self).get(key), torch.Generator):
                generator.set_state(value)

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
