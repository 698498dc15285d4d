import pytest
import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2ForSequenceClassification,
)

from shaping.reward_model import HFRewardModel, RewardModel
from trainers.tasks.synthetic import SyntheticReward, word_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return word_tokenizer(10)


def test_gpt2_rm_is_causal_and_matches_hf_pooling(tokenizer) -> None:
    torch.manual_seed(0)
    model = GPT2ForSequenceClassification(
        GPT2Config(
            vocab_size=len(tokenizer),
            n_embd=16,
            n_layer=1,
            n_head=2,
            num_labels=1,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    rm = HFRewardModel(model, tokenizer)
    assert isinstance(rm, RewardModel) and rm.causal
    ids = torch.tensor([[0, 4, 5, 6], [0, 7, 1, 1]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    with torch.no_grad():
        torch.testing.assert_close(
            rm.scores(ids, mask), model(input_ids=ids, attention_mask=mask).logits[:, 0]
        )
        assert rm.prefix_scores(ids, mask).shape == (2, 4)


def test_encoder_rm_is_not_causal(tokenizer) -> None:
    model = BertForSequenceClassification(
        BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=16,
            num_labels=1,
        )
    )
    rm = HFRewardModel(model, tokenizer)
    assert not rm.causal
    ids, mask = torch.tensor([[0, 4, 5]]), torch.ones(1, 3, dtype=torch.long)
    assert rm.scores(ids, mask).shape == (1,)
    with pytest.raises(TypeError, match="cannot score every prefix"):
        rm.prefix_scores(ids, mask)


def test_rm_with_two_labels_is_refused(tokenizer) -> None:
    model = GPT2ForSequenceClassification(
        GPT2Config(vocab_size=len(tokenizer), n_embd=16, n_layer=1, n_head=2, num_labels=2)
    )
    with pytest.raises(ValueError, match="num_labels=1"):
        HFRewardModel(model, tokenizer)


def test_synthetic_reward_satisfies_the_protocol(tokenizer) -> None:
    assert isinstance(SyntheticReward(tokenizer, seed=0, interaction=0.5), RewardModel)


def test_masked_variants_go_to_the_cheaper_copy_and_the_score_stays_float32(tokenizer) -> None:
    """shaping.coalition_dtype bfloat16: the scorer's coalition rows come from a bf16 copy
    of the RM (close to float32, not equal), the responses' own scores from the RM itself;
    a reward function with no weights cannot be cast and says what to set instead."""
    from shaping.batch import RolloutBatch
    from shaping.reward_model import in_dtype
    from shaping.scorer import RewardScorer

    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    rm = HFRewardModel(GPT2ForSequenceClassification(config), tokenizer)
    half = in_dtype(rm, torch.bfloat16)
    assert next(half.model.parameters()).dtype == torch.bfloat16
    assert next(rm.model.parameters()).dtype == torch.float32  # a copy: the RM is untouched

    prompts, responses = [[0, 4], [0, 5]], [[6, 7, 8, 9], [7, 6, 5]]
    full = RewardScorer(rm)
    scores = [
        float(s) for s in full.score_rows([p + r for p, r in zip(prompts, responses, strict=True)])
    ]
    batch = RolloutBatch.from_lists(prompts, responses, scores, pad_id=tokenizer.pad_token_id)
    coalitions = [torch.rand(6, len(r)) > 0.5 for r in responses]
    exact = full.coalition_values(batch, coalitions)
    cheap = RewardScorer(rm, coalition_rm=half)
    approx = cheap.coalition_values(batch, coalitions)
    for e, a in zip(exact, approx, strict=True):
        torch.testing.assert_close(a, e, atol=0.05, rtol=0.05)
    assert any(not torch.equal(a, e) for e, a in zip(exact, approx, strict=True))
    one = [prompts[0] + responses[0]]
    assert torch.equal(cheap.score_rows(one)[0], full.score_rows(one)[0])  # float32 as before

    with pytest.raises(ValueError, match=r"set shaping\.coalition_dtype: float32"):
        in_dtype(SyntheticReward(tokenizer, seed=0, interaction=0.0), torch.bfloat16)
