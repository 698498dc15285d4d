"""The attributor contract, run against every registered method, and known-answer games."""

from __future__ import annotations

import inspect

import pytest
import torch

from shaping.attribution import ATTRIBUTORS, make_attributor
from shaping.attribution.shapley import exact_shapley, player_ids
from shaping.batch import RolloutBatch
from shaping.scorer import RewardScorer
from shaping.shape import conservation_residual

METHODS = sorted(ATTRIBUTORS)


@pytest.mark.parametrize("name", METHODS)
def test_shape_padding_and_finiteness(name: str, rm, batch: RolloutBatch) -> None:
    credits = make_attributor(name, RewardScorer(rm)).attribute(batch)
    assert credits.shape == batch.response_ids.shape
    assert not credits.requires_grad
    assert bool(torch.isfinite(credits).all())
    assert bool((credits[batch.response_mask == 0] == 0).all())


@pytest.mark.parametrize("name", METHODS)
def test_deterministic_under_a_seed(name: str, rm, batch: RolloutBatch) -> None:
    takes_seed = "seed" in inspect.signature(ATTRIBUTORS[name].__init__).parameters
    options = {"seed": 3} if takes_seed else {}
    a = make_attributor(name, RewardScorer(rm), **options).attribute(batch)
    b = make_attributor(name, RewardScorer(rm), **options).attribute(batch)
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", [n for n in METHODS if ATTRIBUTORS[n].conserves])
def test_conservation_up_to_a_prompt_only_term(name: str, task, rm, make_batch) -> None:
    """Two different responses to one prompt leave the same residual R - sum(credits)."""
    prompt = task.prompts("eval")[0]
    responses = [[5, 9, 4, 11, 7, 6], [12, 3, 8, 8, 10, 14], [6, 6]]
    batch = make_batch(rm, [prompt] * 3, responses)
    options = (
        {"max_exact_players": 2, "permutations": 4} if name == "shapley" else {}
    )  # sampled too
    credits = make_attributor(name, RewardScorer(rm), **options).attribute(batch)
    residual = conservation_residual(credits, batch.scores)
    torch.testing.assert_close(residual, residual[:1].expand(3), atol=1e-5, rtol=0)


def test_sparse_is_the_classic_reward(batch: RolloutBatch, rm) -> None:
    credits = make_attributor("sparse", RewardScorer(rm)).attribute(batch)
    expected = torch.zeros_like(credits)
    expected[torch.arange(batch.size), batch.lengths - 1] = batch.scores
    assert torch.equal(credits, expected)


def test_exact_shapley_matches_the_closed_form(batch: RolloutBatch, rm) -> None:
    credits = make_attributor("shapley", RewardScorer(rm)).attribute(batch)
    for i in range(batch.size):
        T = int(batch.lengths[i])
        torch.testing.assert_close(
            credits[i, :T],
            rm.exact_shapley(batch.prompt(i), batch.response(i)),
            atol=1e-5,
            rtol=1e-5,
        )


def test_sampled_shapley_converges(task, rm, make_batch) -> None:
    response = [(7 * t) % 13 + 3 for t in range(14)]
    batch = make_batch(rm, [task.prompts("eval")[1]], [response])
    exact = rm.exact_shapley(batch.prompt(0), response)
    sampled = make_attributor(
        "shapley", RewardScorer(rm), max_exact_players=4, permutations=400
    ).attribute(batch)[0]
    rel = (sampled - exact).norm() / exact.norm()
    assert rel < 0.1


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (torch.tensor([0.0, 1.0, 2.0, 3.0]), [1.0, 2.0]),  # additive: v = x0 + 2 x1
        (torch.tensor([0.0, 0.0, 0.0, 1.0]), [0.5, 0.5]),  # pure interaction: shared evenly
        (torch.tensor([0.0, 1.0, 0.0, 1.0]), [1.0, 0.0]),  # player 1 is a null player
        (torch.tensor([2.0, 2.0, 2.0, 2.0]), [0.0, 0.0]),  # a constant game: nothing to share
    ],
)
def test_exact_shapley_known_games(values: torch.Tensor, expected: list[float]) -> None:
    torch.testing.assert_close(exact_shapley(values, 2), torch.tensor(expected))


def test_symmetric_game_three_players() -> None:
    values = torch.tensor(
        [bin(k).count("1") ** 2 for k in range(8)], dtype=torch.float32
    )  # v = |S|^2
    torch.testing.assert_close(exact_shapley(values, 3), torch.full((3,), 3.0))


def test_players_by_unit() -> None:
    pieces = ["The", " film", " was", " great", ",", " really", " great", "!", " Bye"]
    assert player_ids(pieces, "token").tolist() == list(range(9))
    assert player_ids(pieces, "word").tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8]
    assert player_ids(["un", "believ", "able", " film"], "word").tolist() == [0, 0, 0, 1]
    assert player_ids(pieces, "span").tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 2]


def test_span_value_goes_on_the_last_token_and_sums(task, rm, make_batch) -> None:
    batch = make_batch(rm, [task.prompts("eval")[2]], [[5, 9, 4, 11]])
    attributor = make_attributor("shapley", RewardScorer(rm), unit="span")
    # The synthetic words have no punctuation: one span, whose value is v(N) - v(empty).
    credits = attributor.attribute(batch)[0]
    assert credits[:3].abs().sum() == 0
    token = make_attributor("shapley", RewardScorer(rm)).attribute(batch)[0]
    assert credits[3].item() == pytest.approx(token.sum().item(), abs=1e-5)


def test_red_telescopes_and_matches_a_non_causal_rm(batch: RolloutBatch, rm) -> None:
    credits = make_attributor("red", RewardScorer(rm)).attribute(batch)
    empty = torch.stack([v[0] for v in RewardScorer(rm).prefix_values(batch)])
    torch.testing.assert_close(credits.sum(1), batch.scores - empty, atol=1e-5, rtol=0)
    kept = make_attributor("red", RewardScorer(rm), keep_offset=True).attribute(batch)
    torch.testing.assert_close(kept.sum(1), batch.scores, atol=1e-5, rtol=0)
    rm.causal = False  # the same game scored one prefix per row
    try:
        scorer = RewardScorer(rm)
        torch.testing.assert_close(
            make_attributor("red", scorer).attribute(batch), credits, atol=1e-5, rtol=0
        )
        assert scorer.stats.rows == int(batch.lengths.sum()) + batch.size
    finally:
        rm.causal = True


def test_unknown_method_and_option(rm) -> None:
    with pytest.raises(ValueError, match="unknown attribution method 'magic'"):
        make_attributor("magic", RewardScorer(rm))
    with pytest.raises(ValueError, match="method 'sparse'"):
        make_attributor("sparse", RewardScorer(rm), colour="red")
    with pytest.raises(ValueError, match="permutations=3"):
        make_attributor("shapley", RewardScorer(rm), permutations=3)
