"""The attributor contract, run against every registered method, and known-answer games."""

from __future__ import annotations

import inspect
import re
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from tokenizers import ByteLevelBPETokenizer
from transformers import PreTrainedTokenizerFast

from shaping.attribution import ATTRIBUTORS, check_method_options, make_attributor
from shaping.attribution.options import MethodOptionError
from shaping.attribution.shapley import ShapleyAttributor, exact_shapley, player_ids
from shaping.batch import RolloutBatch
from shaping.scorer import NonFiniteRewardError, RewardScorer
from shaping.shape import conservation_residual

METHODS = sorted(ATTRIBUTORS)


def constructor_options(name: str) -> dict[str, Any]:
    """A method's options as its constructor declares them, with their defaults."""
    params = inspect.signature(ATTRIBUTORS[name].__init__).parameters
    return {k: p.default for k, p in params.items() if k not in ("self", "scorer")}


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


def pieces_to_spans(pieces: list[str]) -> tuple[str, list[tuple[int, int]]]:
    """The text the pieces make, and each piece's character span in it."""
    spans, at = [], 0
    for piece in pieces:
        spans.append((at, at + len(piece)))
        at += len(piece)
    return "".join(pieces), spans


def test_players_by_unit() -> None:
    pieces = ["The", " film", " was", " great", ",", " really", " great", "!", " Bye"]
    text, spans = pieces_to_spans(pieces)
    assert player_ids(text, spans, "token").tolist() == list(range(9))
    assert player_ids(text, spans, "word").tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8]
    assert player_ids(*pieces_to_spans(["un", "believ", "able", " film"]), "word").tolist() == [
        0,
        0,
        0,
        1,
    ]
    assert player_ids(text, spans, "span").tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 2]


def test_players_from_character_spans() -> None:
    # Words without their spaces (a word-level tokenizer): the text has the spaces.
    assert player_ids("w1 w2 w3", [(0, 2), (2, 5), (5, 8)], "word").tolist() == [0, 1, 2]
    # A token with no character of its own (the second half of one) joins the one before.
    assert player_ids(" caf\u00e9 au", [(0, 4), (4, 5), (5, 5), (5, 8)], "word").tolist() == [
        0,
        0,
        0,
        1,
    ]
    # A space token alone goes with the word after it; a run of delimiters cuts one span.
    text, spans = pieces_to_spans([" Really", "?", "!", " ", "Yes", ".", ".", ".", " No"])
    assert player_ids(text, spans, "word").tolist() == [0, 1, 2, 3, 3, 4, 5, 6, 7]
    assert player_ids(text, spans, "span").tolist() == [0, 0, 0, 1, 1, 1, 1, 1, 2]


def test_word_players_of_a_tokenizer_whose_pieces_have_no_spaces(task, rm, make_batch) -> None:
    """The synthetic task's word-level tokenizer decodes a token alone without its space."""
    words = task.tokenizer("w1 w2 w3", add_special_tokens=False)["input_ids"]
    batch = make_batch(rm, [task.prompts("eval")[0]], [words])
    shapley = make_attributor("shapley", RewardScorer(rm), unit="word")
    assert isinstance(shapley, ShapleyAttributor)
    assert shapley.players(batch, 0).tolist() == [0, 1, 2]


@pytest.fixture(scope="module")
def bpe() -> PreTrainedTokenizerFast:
    """A byte-level BPE that never saw "\u00e9": it writes the character as two byte tokens."""
    trainer = ByteLevelBPETokenizer()
    texts = ["a cafe au lait, please. Really? Yes!", "the cat sat on the mat. Is it? No!"] * 20
    trainer.train_from_iterator(texts, vocab_size=300, special_tokens=["<pad>", "<mask>"])
    return PreTrainedTokenizerFast(
        tokenizer_object=trainer._tokenizer, pad_token="<pad>", mask_token="<mask>"
    )


def bpe_players(bpe: PreTrainedTokenizerFast, prompt: str, response: str, unit: str) -> list[int]:
    rm = SimpleNamespace(tokenizer=bpe, mask_token_id=bpe.mask_token_id, causal=True)
    encode = lambda s: bpe(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    batch = RolloutBatch.from_lists([encode(prompt)], [encode(response)], [0.0], bpe.pad_token_id)
    shapley = make_attributor("shapley", RewardScorer(rm), unit=unit)
    assert isinstance(shapley, ShapleyAttributor)
    return shapley.players(batch, 0).tolist()


def test_a_character_split_over_byte_tokens_is_one_player(bpe) -> None:
    cafe = bpe(" caf\u00e9", add_special_tokens=False)["input_ids"]
    assert "\ufffd" in [
        bpe.decode([t]) for t in cafe
    ]  # the bytes of "\u00e9" decode alone to \ufffd
    n_au, n_lait = (len(bpe(w, add_special_tokens=False)["input_ids"]) for w in (" au", " lait"))
    expected = [0] * len(cafe) + [1] * n_au + [2] * n_lait
    assert bpe_players(bpe, "Order:", " caf\u00e9 au lait", "word") == expected


def test_byte_level_spans_are_cut_after_punctuation(bpe) -> None:
    response = " caf\u00e9, please. Really?! Yes"
    pieces = [bpe.decode([t]) for t in bpe(response, add_special_tokens=False)["input_ids"]]
    assert pieces == [" caf", "\ufffd", "\ufffd", ",", " please", ".", " Really", "?", "!", " Yes"]
    assert bpe_players(bpe, "Order:", response, "span") == [0, 0, 0, 0, 1, 1, 2, 2, 2, 3]
    assert bpe_players(bpe, "Order:", response, "word") == [0, 0, 0, 1, 2, 3, 4, 5, 6, 7]


def test_span_value_goes_on_the_last_token_and_sums(task, rm, make_batch) -> None:
    batch = make_batch(rm, [task.prompts("eval")[2]], [[5, 9, 4, 11]])
    attributor = make_attributor("shapley", RewardScorer(rm), unit="span")
    # The synthetic words have no punctuation: one span, whose value is v(N) - v(empty).
    credits = attributor.attribute(batch)[0]
    assert credits[:3].abs().sum() == 0
    token = make_attributor("shapley", RewardScorer(rm)).attribute(batch)[0]
    assert credits[3].item() == pytest.approx(token.sum().item(), abs=1e-5)


def test_red_telescopes(batch: RolloutBatch, rm) -> None:
    credits = make_attributor("red", RewardScorer(rm)).attribute(batch)
    empty = torch.stack([v[0] for v in RewardScorer(rm).prefix_values(batch)])
    torch.testing.assert_close(credits.sum(1), batch.scores - empty, atol=1e-5, rtol=0)
    kept = make_attributor("red", RewardScorer(rm), keep_offset=True).attribute(batch)
    torch.testing.assert_close(kept.sum(1), batch.scores, atol=1e-5, rtol=0)


def test_red_on_a_non_causal_rm_takes_the_full_row_from_the_batch(
    batch: RolloutBatch, rm, non_causal_rm
) -> None:
    """One row per prefix t = 0..T-1; the full row (t = T) is the batch's R, not a row."""
    scorer = RewardScorer(non_causal_rm)
    credits = make_attributor("red", scorer).attribute(batch)
    assert scorer.stats.rows == int(batch.lengths.sum())
    causal = make_attributor("red", RewardScorer(rm)).attribute(batch)
    torch.testing.assert_close(credits, causal, atol=1e-5, rtol=0)
    for scorer in (RewardScorer(rm), RewardScorer(non_causal_rm)):
        last = torch.stack([v[-1] for v in scorer.prefix_values(batch)])
        assert torch.equal(last, batch.scores)


def test_unknown_method_and_option(rm) -> None:
    with pytest.raises(ValueError, match="unknown attribution method 'magic'"):
        make_attributor("magic", RewardScorer(rm))
    with pytest.raises(ValueError, match=r"sparse\.colour is not an option.*none"):
        make_attributor("sparse", RewardScorer(rm), colour="red")
    with pytest.raises(ValueError, match=r"shapley\.permutations=3 is invalid"):
        make_attributor("shapley", RewardScorer(rm), permutations=3)


@pytest.mark.parametrize("name", [n for n in METHODS if ATTRIBUTORS[n].reads_rm])
def test_a_non_finite_rm_value_is_refused_naming_response_and_method(name: str, poisoned) -> None:
    bad_rm, batch = poisoned  # response 1 holds the word the RM gives NaN for
    text = bad_rm.tokenizer.decode(batch.response(1))
    with pytest.raises(NonFiniteRewardError) as caught:
        make_attributor(name, RewardScorer(bad_rm)).attribute(batch)
    error = caught.value
    assert (error.response, error.method, error.text) == (1, name, text)
    assert re.search(rf"nan for response 1 \({re.escape(repr(text))}.*method '{name}'", str(error))


@pytest.mark.parametrize("name", METHODS)
def test_a_non_finite_batch_score_is_refused(name: str, rm, batch: RolloutBatch) -> None:
    batch.scores[2] = float("inf")  # after the batch checked its scores: a caller's mistake
    with pytest.raises(NonFiniteRewardError, match=rf"inf for response 2 .*method '{name}'"):
        make_attributor(name, RewardScorer(rm)).attribute(batch)


@pytest.mark.parametrize("name", METHODS)
def test_options_are_declared_as_the_constructor_takes_them(name: str) -> None:
    cls = ATTRIBUTORS[name]
    assert set(cls.options) == set(constructor_options(name))
    check_method_options(name, constructor_options(name))  # the defaults are valid


BAD_VALUES = [None, "bogus", float("nan"), float("inf"), 2.5, [1]]


@pytest.mark.parametrize(
    ("name", "option", "value"),
    [
        (n, k, v)
        for n in METHODS
        for k in constructor_options(n)
        for v in BAD_VALUES
        if not ATTRIBUTORS[n].options[k].accepts(v)  # 2.5 is a fine amortized.prior
    ],
    ids=repr,
)
def test_bad_option_values_are_refused(name: str, option: str, value: Any, rm) -> None:
    """By the constructor and by admission, with one message naming method.option=value."""
    named = re.escape(f"{name}.{option}={value!r} is invalid (give ")
    with pytest.raises(MethodOptionError, match=named):
        check_method_options(name, {option: value})
    with pytest.raises(MethodOptionError, match=named):
        make_attributor(name, RewardScorer(rm), **{option: value})
    with pytest.raises(MethodOptionError, match=named):
        ATTRIBUTORS[name](RewardScorer(rm), **{option: value})  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("shapley", {"unit": "bogus"}, "shapley.unit='bogus' is invalid (give one of 'token', "),
        ("shapley", {"permutations": -5}, "shapley.permutations=-5 is invalid (give an even "),
        ("shapley", {"permutations": True}, "shapley.permutations=True is invalid"),
        ("shapley", {"max_exact_players": 17}, "shapley.max_exact_players=17 is invalid"),
        (
            "shapley",
            {"estimator": "shap"},
            "shapley.estimator='shap' is invalid (give one of 'permutation', 'leverage', 'kernel')",
        ),
        ("lime", {"num_samples": 2.5}, "lime.num_samples=2.5 is invalid (give an integer >= 2"),
        ("lime", {"seed": -1}, "lime.seed=-1 is invalid"),
        ("shap", {"max_evals": 500.0}, "shap.max_evals=500.0 is invalid"),
        ("attention", {"beta": float("nan")}, "attention.beta=nan is invalid (give a finite"),
        ("attention", {"beta": True}, "attention.beta=True is invalid"),
        ("red", {"keep_offset": 1}, "red.keep_offset=1 is invalid (give true or false)"),
    ],
)
def test_specific_bad_options(name: str, options: dict, message: str) -> None:
    with pytest.raises(MethodOptionError, match=re.escape(message)):
        check_method_options(name, options)


def test_every_bad_option_is_named_at_once() -> None:
    with pytest.raises(MethodOptionError) as caught:
        check_method_options("shapley", {"unit": "bogus", "permutations": -5, "colour": 1})
    assert set(caught.value.problems) == {"shapley.unit", "shapley.permutations", "shapley.colour"}
    assert all(problem in str(caught.value) for problem in caught.value.problems.values())
    with pytest.raises(ValueError, match="unknown attribution method 'magic'"):
        check_method_options("magic", {})
