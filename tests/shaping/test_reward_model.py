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
