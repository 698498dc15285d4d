"""The token Shapley sampler's estimators (`shapley.estimator`): permutation, leverage, kernel.

Antithetic permutations are exact on the synthetic game (it has pairwise interactions only),
so convergence is checked on `SquashedReward`, a game with interactions of every order.
"""

from __future__ import annotations

import pytest
import torch

from shaping.attribution import make_attributor
from shaping.attribution.shapley import ShapleyAttributor, paired_subsets, size_shares
from shaping.batch import RolloutBatch
from shaping.scorer import RewardScorer
from trainers.tasks.synthetic import SyntheticReward, SyntheticTask

REGRESSIONS = ["leverage", "kernel"]
ESTIMATORS = ["permutation", *REGRESSIONS]


class SquashedReward:
    """The synthetic reward through tanh: every coalition of tokens interacts."""

    def __init__(self, rm: SyntheticReward) -> None:
        self.rm = rm
        self.tokenizer, self.mask_token_id, self.causal = rm.tokenizer, rm.mask_token_id, True

    def prefix_scores(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return 3 * torch.tanh(self.rm.prefix_scores(ids, mask) / 3)

    def scores(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return 3 * torch.tanh(self.rm.scores(ids, mask) / 3)


def response_batch(rm, make_batch, task: SyntheticTask, M: int, n: int = 1) -> RolloutBatch:
    g = torch.Generator().manual_seed(M)
    first_word = task.tokenizer.mask_token_id + 1
    responses = torch.randint(first_word, len(task.tokenizer), (n, M), generator=g).tolist()
    return make_batch(rm, task.prompts("eval")[:n], responses)


def shapley(rm, **options) -> ShapleyAttributor:
    attributor = make_attributor("shapley", RewardScorer(rm), max_exact_players=1, **options)
    assert isinstance(attributor, ShapleyAttributor)
    return attributor


@pytest.mark.parametrize("estimator", REGRESSIONS)
def test_regression_is_exact_on_an_additive_game(estimator: str, make_batch) -> None:
    task = SyntheticTask(n_words=32, response_length=14, interaction=0.0, seed=3)
    rm = task.load_reward_model()
    batch = response_batch(rm, make_batch, task, M=14, n=2)
    credits = shapley(rm, estimator=estimator, permutations=4).attribute(batch)
    for i in range(batch.size):
        exact = rm.exact_shapley(batch.prompt(i), batch.response(i))
        torch.testing.assert_close(credits[i], exact, atol=1e-4, rtol=0)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_converges_on_a_game_with_higher_order_interactions(
    estimator: str, task, rm, make_batch
) -> None:
    squashed = SquashedReward(rm)
    batch = response_batch(squashed, make_batch, task, M=12)
    exact = make_attributor("shapley", RewardScorer(squashed), max_exact_players=12)
    reference = exact.attribute(batch)[0]

    def error(permutations: int) -> float:
        runs = [
            shapley(squashed, estimator=estimator, permutations=permutations, seed=s)
            for s in range(4)
        ]
        rel = [(r.attribute(batch)[0] - reference).norm() / reference.norm() for r in runs]
        return float(torch.stack(rel).mean())

    few, many = error(2), error(64)
    assert many < 0.05
    assert many < few / 3


@pytest.mark.parametrize("estimator", REGRESSIONS)
def test_a_budget_that_covers_every_coalition_gives_the_exact_values(
    estimator: str, task, rm, make_batch
) -> None:
    squashed = SquashedReward(rm)
    batch = response_batch(squashed, make_batch, task, M=5)  # 2^5 - 2 = 30 < 16 * 4
    exact = make_attributor("shapley", RewardScorer(squashed)).attribute(batch)
    sampled = shapley(squashed, estimator=estimator, permutations=16).attribute(batch)
    torch.testing.assert_close(sampled, exact, atol=1e-5, rtol=0)


@pytest.mark.parametrize("estimator", REGRESSIONS)
@pytest.mark.parametrize(("unit", "placement"), [("token", "last"), ("word", "spread")])
def test_regression_conserves_exactly(
    estimator: str, unit: str, placement: str, task, rm, make_batch
) -> None:
    squashed = SquashedReward(rm)
    batch = response_batch(squashed, make_batch, task, M=13, n=3)
    attributor = shapley(
        squashed, estimator=estimator, unit=unit, placement=placement, permutations=2
    )
    credits = attributor.attribute(batch)
    empty = RewardScorer(squashed).coalition_values(
        batch, [torch.zeros(1, 13, dtype=torch.bool)] * 3
    )
    torch.testing.assert_close(
        credits.sum(dim=1), batch.scores - torch.cat(empty), atol=1e-5, rtol=0
    )


@pytest.mark.parametrize("estimator", REGRESSIONS)
def test_deterministic_under_a_seed_and_resumable(estimator: str, task, rm, make_batch) -> None:
    batch = response_batch(SquashedReward(rm), make_batch, task, M=13, n=2)
    a, b, c = (shapley(rm, estimator=estimator, seed=s) for s in (5, 5, 6))
    torch.testing.assert_close(a.attribute(batch), b.attribute(batch))
    assert not torch.equal(a.attribute(batch), c.attribute(batch))
    resumed = shapley(rm, estimator=estimator, seed=0)
    resumed.load_state(a.state())  # a checkpoint taken after a's two batches
    torch.testing.assert_close(resumed.attribute(batch), a.attribute(batch))


def test_equal_options_cost_equal_rows(task, rm, make_batch) -> None:
    """P permutations and P(M - 1) coalitions: at most P(M - 1) + 1 rows (v(N) is free)."""
    M, P = 13, 6
    batch = response_batch(rm, make_batch, task, M=M)
    rows = {}
    for estimator in ESTIMATORS:
        attributor = shapley(rm, estimator=estimator, permutations=P)
        attributor.attribute(batch)
        rows[estimator] = attributor.scorer.stats.rows
    assert rows["leverage"] == rows["kernel"] == P * (M - 1) + 1  # distinct by construction
    assert rows["permutation"] <= P * (M - 1) + 1  # fewer where permutations share a prefix


def test_size_shares() -> None:
    # Leverage: every size as often as in as many permutations (half as many pairs at M/2).
    assert size_shares(24, 8 * 23, "leverage") == {s: 8 for s in range(1, 12)} | {12: 4}
    kernel = size_shares(24, 8 * 23, "kernel")
    assert kernel[1] == 24  # all 24 singletons (and their complements): the kernel's mass
    assert sum(kernel.values()) == 8 * 23 // 2
    assert size_shares(5, 1000, "leverage") == {1: 5, 2: 10}  # all 30 coalitions


@pytest.mark.parametrize(("M", "s", "n"), [(6, 3, 10), (6, 3, 4), (7, 2, 21), (24, 3, 40)])
def test_paired_subsets_are_distinct_pairs_of_complements(M: int, s: int, n: int) -> None:
    drawn = paired_subsets(M, s, n, torch.Generator().manual_seed(0))
    assert drawn.shape == (2 * n, M)
    assert torch.unique(drawn, dim=0).shape[0] == 2 * n
    assert drawn[:n].sum(dim=1).eq(s).all()
    assert torch.equal(drawn[n:], ~drawn[:n])
