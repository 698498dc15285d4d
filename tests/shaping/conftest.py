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
