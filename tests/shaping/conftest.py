from __future__ import annotations

import pytest
import torch

from shaping.batch import RolloutBatch
from shaping.scorer import RewardScorer
from trainers.tasks.synthetic import SyntheticReward, SyntheticTask


@pytest.fixture(scope="module")
def task() -> SyntheticTask:
    return SyntheticTask(n_words=16, response_length=6, interaction=0.8, seed=7)


@pytest.fixture
def rm(task: SyntheticTask) -> SyntheticReward:
    return task.load_reward_model()


def make_batch(
    rm: SyntheticReward, prompts: list[list[int]], responses: list[list[int]]
) -> RolloutBatch:
    rows = [p + r for p, r in zip(prompts, responses, strict=True)]
    scores = [float(s) for s in RewardScorer(rm).score_rows(rows)]
    return RolloutBatch.from_lists(prompts, responses, scores, pad_id=rm.tokenizer.pad_token_id)


@pytest.fixture(name="make_batch")
def _make_batch():
    return make_batch


@pytest.fixture
def batch(task: SyntheticTask, rm: SyntheticReward) -> RolloutBatch:
    g = torch.Generator().manual_seed(0)
    prompts = task.prompts("train")[:4]
    lengths = [6, 3, 1, 5]  # ragged, with T = 1
    responses = [torch.randint(3, len(task.tokenizer), (n,), generator=g).tolist() for n in lengths]
    return make_batch(rm, prompts, responses)


class PoisonedReward:
    """The synthetic RM, but NaN for every row that holds `poison` (and, scoring prefixes,
    for every prefix from it on): an RM that breaks on one text."""

    def __init__(self, rm: SyntheticReward, poison: int) -> None:
        self.rm, self.poison = rm, poison
        self.tokenizer, self.mask_token_id, self.causal = rm.tokenizer, rm.mask_token_id, True

    def _seen(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return ((ids == self.poison) & mask.bool()).cumsum(dim=1) > 0  # (B, T)

    def scores(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hit = self._seen(ids, mask)[:, -1]
        return self.rm.scores(ids, mask).masked_fill(hit, float("nan"))

    def prefix_scores(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.rm.prefix_scores(ids, mask).masked_fill(self._seen(ids, mask), float("nan"))

    def attentions(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hit = self._seen(ids, mask)[:, -1:]
        return self.rm.attentions(ids, mask).masked_fill(hit, float("nan"))

    def scores_and_states(
        self, ids: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self.prefix_scores(ids, mask) if self.causal else self.scores(ids, mask)
        return scores, self.rm.scores_and_states(ids, mask)[1]


class NonCausalReward:
    """The synthetic RM as a non-causal one (an encoder's [CLS] score): no prefix scores."""

    def __init__(self, rm: SyntheticReward) -> None:
        self.rm = rm
        self.tokenizer, self.mask_token_id, self.causal = rm.tokenizer, rm.mask_token_id, False

    def scores(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.rm.scores(ids, mask)

    def prefix_scores(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        raise TypeError("a non-causal RM scores no prefixes")

    def attentions(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.rm.attentions(ids, mask)

    def scores_and_states(
        self, ids: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.scores(ids, mask), self.rm.scores_and_states(ids, mask)[1]


@pytest.fixture
def poisoned(task: SyntheticTask, rm: SyntheticReward) -> tuple[PoisonedReward, RolloutBatch]:
    """An RM that returns NaN for rows holding one word, and a batch (scored by the healthy
    RM) where only response 1 holds it."""
    prompts = task.prompts("train")[:3]
    words = sorted(set(range(3, len(task.tokenizer))) - {t for p in prompts for t in p})
    poison, a, b, c = words[:4]
    batch = make_batch(rm, prompts, [[a, b, c, a], [b, a, poison, c], [c, b]])
    return PoisonedReward(rm, poison), batch


@pytest.fixture
def non_causal_rm(rm: SyntheticReward) -> NonCausalReward:
    return NonCausalReward(rm)
