"""A reward model with its own tokenizer (credits mapped through character offsets), the
attention method on a real transformer RM, and the Shaper."""

from __future__ import annotations

import pytest
import torch
from tokenizers import ByteLevelBPETokenizer
from transformers import GPT2Config, GPT2ForSequenceClassification, PreTrainedTokenizerFast

from shaping.align import decode_spans, overlap_matrix
from shaping.attribution import ATTRIBUTORS, make_attributor
from shaping.batch import BatchError, RolloutBatch
from shaping.reward_model import HFRewardModel
from shaping.scorer import RewardScorer
from shaping.shape import conservation_residual
from shaping.shaper import Shaper
from trainers.tasks.synthetic import word_tokenizer

WORDS = 20


@pytest.fixture(scope="module")
def policy_tokenizer() -> PreTrainedTokenizerFast:
    return word_tokenizer(WORDS)


@pytest.fixture(scope="module")
def hf_rm() -> HFRewardModel:
    """A GPT-2 RM whose byte-level BPE splits the policy's words differently ("w13" may be
    "w1" + "3", and " w" a token of its own)."""
    bpe = ByteLevelBPETokenizer()
    texts = [" ".join(f"w{(i * k) % WORDS}" for k in range(1, 9)) for i in range(50)]
    bpe.train_from_iterator(texts, vocab_size=300, special_tokens=["<s>", "<pad>", "<mask>"])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, bos_token="<s>", pad_token="<pad>", mask_token="<mask>"
    )
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=64,
        n_embd=16,
        n_layer=2,
        n_head=2,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.bos_token_id,
    )
    torch.manual_seed(0)
    return HFRewardModel(GPT2ForSequenceClassification(config), tokenizer)


def policy_batch(tokenizer, scorer: RewardScorer) -> RolloutBatch:
    words = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    prompts = [words("w1 w2"), words("w3"), words("w4 w5 w6")]
    responses = [words("w13 w7 w19 w0"), words("w11"), words("w12 w12 w8")]
    scores = scorer.score_responses(prompts, responses)
    return RolloutBatch.from_lists(prompts, responses, scores.tolist(), tokenizer.pad_token_id)


def test_decode_spans_cover_the_text(policy_tokenizer) -> None:
    encode = lambda s: policy_tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    prompt_text, text, spans = decode_spans(policy_tokenizer, encode("w1"), encode("w13 w7 w0"))
    assert (prompt_text, text) == ("w1", " w13 w7 w0")
    assert spans == [(0, 4), (4, 7), (7, 10)]  # a word's leading space is its own


def test_overlap_matrix_splits_by_shared_characters() -> None:
    m = overlap_matrix([(0, 4), (4, 6), (6, 6)], [(0, 2), (2, 6)])
    torch.testing.assert_close(m, torch.tensor([[0.5, 0.5], [0.0, 1.0], [0.0, 1.0]]))
    torch.testing.assert_close(m.sum(1), torch.ones(3))  # every source token fully carried


def test_scorer_scores_policy_tokens_through_the_rm_tokenizer(policy_tokenizer, hf_rm) -> None:
    scorer = RewardScorer(hf_rm, policy_tokenizer=policy_tokenizer)
    batch = policy_batch(policy_tokenizer, scorer)
    direct = hf_rm.tokenizer("w1 w2 w13 w7 w19 w0")["input_ids"]
    assert batch.scores[0].item() == pytest.approx(
        RewardScorer(hf_rm).score_rows([direct])[0].item(), abs=1e-6
    )
    view = scorer.view(batch)
    assert view.maps is not None and view.batch.size == batch.size
    assert [m.shape[1] for m in view.maps] == batch.lengths.tolist()


@pytest.mark.parametrize("name", sorted(ATTRIBUTORS))
def test_every_method_maps_back_to_policy_tokens(name, policy_tokenizer, hf_rm) -> None:
    scorer = RewardScorer(hf_rm, policy_tokenizer=policy_tokenizer)
    batch = policy_batch(policy_tokenizer, scorer)
    attributor = make_attributor(name, scorer)
    credits = attributor.attribute(batch)
    assert credits.shape == batch.response_ids.shape
    assert bool((credits[batch.response_mask == 0] == 0).all())
    # Mapping preserves each row's sum: conserving methods leave a prompt-only residual,
    # which for these RM-free checks means: the same as in the RM's own tokens.
    in_rm_tokens = attributor._credits(scorer.view(batch).batch)
    if attributor.conserves:
        torch.testing.assert_close(credits.sum(1), in_rm_tokens.sum(1), atol=1e-5, rtol=0)


def test_sparse_stays_on_the_last_policy_token(policy_tokenizer, hf_rm) -> None:
    scorer = RewardScorer(hf_rm, policy_tokenizer=policy_tokenizer)
    batch = policy_batch(policy_tokenizer, scorer)
    credits = make_attributor("sparse", scorer).attribute(batch)
    assert credits[0].tolist()[:3] == [0.0, 0.0, 0.0]
    assert credits[0, 3].item() == pytest.approx(batch.scores[0].item())


def test_a_response_the_rm_cannot_see_is_refused(policy_tokenizer, hf_rm) -> None:
    scorer = RewardScorer(hf_rm, policy_tokenizer=policy_tokenizer)
    eos = policy_tokenizer.eos_token_id
    batch = RolloutBatch.from_lists([[5, 6]], [[eos]], [0.5], policy_tokenizer.pad_token_id)
    with pytest.raises(BatchError, match="no characters the reward model's tokenizer can see"):
        make_attributor("red", scorer).attribute(batch)


def test_attention_reads_the_rm_last_layer_from_the_scoring_position(hf_rm) -> None:
    ids = hf_rm.tokenizer("w1 w2 w13 w7")["input_ids"]
    prompt, response = ids[:2], ids[2:]
    scorer = RewardScorer(hf_rm)
    R = scorer.score_rows([ids])[0].item()
    batch = RolloutBatch.from_lists([prompt], [response], [R], hf_rm.tokenizer.pad_token_id)
    credits = make_attributor("attention", scorer).attribute(batch)[0]
    # By hand: eager attention of the last layer, heads averaged, row of the last token.
    hf_rm.model.set_attn_implementation("eager")
    out = hf_rm.model.base_model(input_ids=torch.tensor([ids]), output_attentions=True)
    hf_rm.model.set_attn_implementation("sdpa")
    a = out.attentions[-1][0].mean(0)[-1, len(prompt) :]
    torch.testing.assert_close(credits, R * a / a.sum(), atol=1e-6, rtol=1e-5)
    assert credits.sum().item() == pytest.approx(R, abs=1e-5)
    half = make_attributor("attention", scorer, beta=0.5).attribute(batch)[0]
    expected = 0.5 * credits
    expected[-1] += 0.5 * R
    torch.testing.assert_close(half, expected, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match=r"beta=1\.5"):
        make_attributor("attention", scorer, beta=1.5)


def test_shaper_mixes_weighted_methods_and_builds_only_those(rm, batch) -> None:
    scorer = RewardScorer(rm)
    shaper = Shaper(scorer, {"red": 0.5, "sparse": 0.5, "uniform": 0.0})
    assert set(shaper.attributors) == {"red", "sparse"}
    rewards = shaper(batch)
    red = make_attributor("red", RewardScorer(rm)).attribute(batch)
    sparse = make_attributor("sparse", RewardScorer(rm)).attribute(batch)
    torch.testing.assert_close(rewards, 0.5 * red + 0.5 * sparse)
    torch.testing.assert_close(shaper.last_offsets, conservation_residual(rewards, batch.scores))
    metrics = shaper.metrics()
    assert metrics["cost/rm_rows"] == batch.size  # RED: one causal row per response
    assert metrics["cost/attribution_seconds"] > 0
    with pytest.raises(ValueError, match="unknown method"):
        Shaper(scorer, {"magic": 1.0})
    with pytest.raises(ValueError, match="options given for unknown method"):
        Shaper(scorer, {"red": 1.0}, {"redd": {"keep_offset": True}})
