from __future__ import annotations

import pytest
import torch

from shaping.attribution import make_attributor
from shaping.batch import BatchError, RolloutBatch
from shaping.reward_model import NoStatesError
from shaping.scorer import NonFiniteRewardError, RewardScorer
from shaping.shape import shape_rewards
from shaping.weights import check_weights


def test_duplicates_are_scored_once_and_the_full_row_is_free(rm, batch: RolloutBatch) -> None:
    scorer = RewardScorer(rm, rows_per_forward=3)
    T0 = int(batch.lengths[0])
    keep = torch.tensor([[1] * T0, [0] * T0, [0] * T0, [1, 0] * (T0 // 2)], dtype=torch.bool)
    coalitions = [keep] + [torch.ones(1, int(n), dtype=torch.bool) for n in batch.lengths[1:]]
    values = scorer.coalition_values(batch, coalitions)
    assert scorer.stats.requested_rows == 4 + 3
    assert scorer.stats.rows == 2  # the empty and the alternating coalition of response 0
    assert scorer.stats.forwards == 1
    assert values[0][0] == batch.scores[0] and values[0][1] == values[0][2]
    prompt, response = batch.prompt(0), batch.response(0)
    masked = [y if k else rm.mask_token_id for y, k in zip(response, keep[3].tolist(), strict=True)]
    direct = RewardScorer(rm).score_rows([prompt + masked])[0]
    assert values[0][3].item() == pytest.approx(direct.item(), abs=1e-6)


def test_rows_are_packed_into_forwards(rm) -> None:
    scorer = RewardScorer(rm, rows_per_forward=4)
    rows = [[0, 5 + (i % 7)] * (1 + i % 3) for i in range(10)]
    scores = scorer.score_rows(rows)
    assert scorer.stats.forwards == 3 and scorer.stats.rows == 10
    one_by_one = [RewardScorer(rm, rows_per_forward=1).score_rows([r])[0] for r in rows]
    torch.testing.assert_close(torch.stack(scores), torch.stack(one_by_one))


def test_red_reads_its_prefixes_from_the_scoring_pass(rm, batch: RolloutBatch) -> None:
    """The scoring pass of a causal RM keeps every prefix score for RED: one row per
    response serves R and RED, with the same numbers as two passes."""
    prompts = [batch.prompt(i) for i in range(batch.size)]
    responses = [batch.response(i) for i in range(batch.size)]
    shared = RewardScorer(rm)
    red = make_attributor("red", shared)
    scores = shared.score_responses(prompts, responses)
    credits = red.attribute(batch)
    assert shared.stats.rows == batch.size and shared.stats.forwards == 1

    plain = RewardScorer(rm)
    torch.testing.assert_close(scores, plain.score_responses(prompts, responses))
    torch.testing.assert_close(credits, make_attributor("red", RewardScorer(rm)).attribute(batch))
    assert plain.stats.rows == batch.size  # scoring costs the same with or without RED

    # The next batch's scoring pass drops this batch's prefixes: RED then scores its own.
    shared.score_responses(prompts[:1], responses[:1])
    red.attribute(batch)
    assert shared.stats.rows == batch.size + 1 + (batch.size - 1)


@pytest.mark.parametrize("causal", [True, False])
def test_a_non_finite_score_is_refused_naming_the_response(causal: bool, poisoned) -> None:
    bad_rm, batch = poisoned  # response 1 holds the word the RM gives NaN for
    bad_rm.causal = causal  # the two ways a score is read: last prefix score, or a plain one
    prompts = [batch.prompt(i) for i in range(batch.size)]
    responses = [batch.response(i) for i in range(batch.size)]
    text = bad_rm.tokenizer.decode(responses[1])
    message = rf"nan for response 1 \({text!r}; its score R\), asked for by method 'score'"
    with pytest.raises(NonFiniteRewardError, match=message) as caught:
        RewardScorer(bad_rm).score_responses(prompts, responses)
    assert (caught.value.response, caught.value.method) == (1, "score")


@pytest.mark.parametrize(
    ("responses", "scores", "message"),
    [
        ([[5, 6], []], [1.0, 0.0], "response 1 is empty"),
        ([[5, 6], [7]], [1.0, float("nan")], "response 1 has a non-finite reward score"),
    ],
)
def test_bad_batches(responses, scores, message) -> None:
    with pytest.raises(BatchError, match=message):
        RolloutBatch.from_lists([[0, 4], [0, 5]], responses, scores, pad_id=1)


def test_all_padding_response_is_refused() -> None:
    ids = torch.ones(2, 3, dtype=torch.long)
    with pytest.raises(BatchError, match="response 0 is empty"):
        RolloutBatch(ids, torch.ones_like(ids), ids, torch.zeros_like(ids), torch.zeros(2))


def test_shape_rewards_mixes_and_sparse_alone_is_sparse(batch: RolloutBatch) -> None:
    sparse = torch.zeros(batch.response_ids.shape)
    sparse[torch.arange(batch.size), batch.lengths - 1] = batch.scores
    uniform = torch.rand(batch.response_ids.shape)
    assert torch.equal(
        shape_rewards({"sparse": sparse, "uniform": uniform}, {"sparse": 1.0}), sparse
    )
    mixed = shape_rewards({"sparse": sparse, "uniform": uniform}, {"sparse": 0.25, "uniform": 0.75})
    torch.testing.assert_close(mixed, 0.25 * sparse + 0.75 * uniform)


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ({}, "no shaping weights"),
        ({"sparse": 0.5, "red": 0.6}, "sum to 1"),
        ({"sparse": 1.5, "red": -0.5}, ">= 0"),
        ({"sparse": float("nan")}, "finite"),
        ({"magic": 1.0}, "unknown method"),
    ],
)
def test_bad_weights(weights, message) -> None:
    with pytest.raises(ValueError, match=message):
        check_weights(weights, known={"sparse", "red"})


def test_nan_credits_are_refused(batch: RolloutBatch) -> None:
    bad = torch.full(batch.response_ids.shape, float("nan"))
    with pytest.raises(ValueError, match="not finite"):
        shape_rewards({"red": bad}, {"red": 1.0})


def test_hidden_states_come_from_the_scoring_pass(rm, batch: RolloutBatch) -> None:
    """`response_states` reads what `score_responses` kept: no row of its own; a response
    it did not score costs one row; an RM without states is named."""
    scorer = RewardScorer(rm)
    scorer.keep_states = True  # as `amortized` sets it
    prompts = [batch.prompt(i) for i in range(batch.size)]
    scorer.score_responses(prompts, [batch.response(i) for i in range(batch.size)])
    rows = scorer.stats.rows
    states = scorer.response_states(batch)
    assert scorer.stats.rows == rows
    for i, s in enumerate(states):  # the synthetic RM's state of a token is its one-hot id
        assert s.argmax(dim=1).tolist() == batch.response(i)
    fresh = RewardScorer(rm)
    again = fresh.response_states(batch)
    assert fresh.stats.rows == batch.size
    for a, b in zip(states, again, strict=True):
        torch.testing.assert_close(a, b)


def test_an_rm_without_hidden_states_still_scores(rm, batch: RolloutBatch) -> None:
    class Plain:  # a custom RM with the three required methods only
        tokenizer, mask_token_id, causal = rm.tokenizer, rm.mask_token_id, True
        scores, prefix_scores, attentions = rm.scores, rm.prefix_scores, rm.attentions

    scorer = RewardScorer(Plain())
    prompts = [batch.prompt(i) for i in range(batch.size)]
    scores = scorer.score_responses(prompts, [batch.response(i) for i in range(batch.size)])
    torch.testing.assert_close(scores, batch.scores)
    with pytest.raises(NoStatesError, match="Plain gives none: give it a `scores_and_states"):
        scorer.response_states(batch)
