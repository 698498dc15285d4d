"""The shap and lime attributors (Koo et al.) on games with known Shapley values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.cluster.hierarchy import is_valid_linkage, leaves_list

from shaping.attribution import make_attributor
from shaping.attribution.lime_explainer import MASK_WORD, LimeAttributor
from shaping.attribution.shap_explainer import span_tree
from shaping.batch import RolloutBatch
from shaping.scorer import RewardScorer
from trainers.tasks.synthetic import SyntheticTask

SHAP_ALGORITHMS = ["partition", "permutation", "kernel"]


def exact_credits(rm, batch: RolloutBatch) -> torch.Tensor:
    out = torch.zeros(batch.response_ids.shape)
    for i in range(batch.size):
        out[i, : int(batch.lengths[i])] = rm.exact_shapley(batch.prompt(i), batch.response(i))
    return out


def empty_values(rm, batch: RolloutBatch) -> torch.Tensor:
    """v(empty) per response: every response token masked."""
    empty = [torch.zeros(1, int(n), dtype=torch.bool) for n in batch.lengths]
    return torch.cat(RewardScorer(rm).coalition_values(batch, empty))


@pytest.fixture(scope="module")
def additive_rm():
    return SyntheticTask(n_words=16, response_length=6, interaction=0.0, seed=7).load_reward_model()


@pytest.fixture
def additive_batch(additive_rm, task, make_batch) -> RolloutBatch:
    g = torch.Generator().manual_seed(1)
    responses = [torch.randint(3, 19, (n,), generator=g).tolist() for n in (6, 3, 1, 5)]
    return make_batch(additive_rm, task.prompts("train")[:4], responses)


@pytest.fixture
def long_batch(task, rm, make_batch) -> RolloutBatch:
    """Two 14-token responses: 2^14 coalitions, more than any default budget enumerates."""
    responses = [[(7 * t + s) % 13 + 3 for t in range(14)] for s in (0, 5)]
    return make_batch(rm, task.prompts("eval")[1:3], responses)


@pytest.mark.parametrize("algorithm", SHAP_ALGORITHMS)
def test_shap_recovers_an_additive_game(algorithm: str, additive_rm, additive_batch) -> None:
    credits = make_attributor("shap", RewardScorer(additive_rm), algorithm=algorithm)
    torch.testing.assert_close(
        credits.attribute(additive_batch),
        exact_credits(additive_rm, additive_batch),
        atol=1e-5,
        rtol=1e-5,
    )


def test_lime_recovers_an_additive_game(additive_rm, additive_batch) -> None:
    # Ridge (alpha=1) shrinks LIME's coefficients; rescaling to the return undoes most of it.
    credits = make_attributor("lime", RewardScorer(additive_rm)).attribute(additive_batch)
    exact = exact_credits(additive_rm, additive_batch)
    torch.testing.assert_close(credits, exact, atol=0.1, rtol=0)


@pytest.mark.parametrize("algorithm", ["partition", "permutation"])
def test_shap_with_interactions_is_exact_shapley(algorithm: str, rm, batch, long_batch) -> None:
    """Adjacent-pair interactions: Owen values over spans equal Shapley values, and one
    antithetic permutation is exact; the default budget covers 14 tokens."""
    for b in (batch, long_batch):
        credits = make_attributor("shap", RewardScorer(rm), algorithm=algorithm).attribute(b)
        torch.testing.assert_close(credits, exact_credits(rm, b), atol=1e-4, rtol=1e-4)


def test_kernel_shap_is_exact_when_it_enumerates_and_close_when_it_samples(
    rm, batch, long_batch
) -> None:
    kernel = make_attributor("shap", RewardScorer(rm), algorithm="kernel")
    torch.testing.assert_close(kernel.attribute(batch), exact_credits(rm, batch), atol=1e-4, rtol=0)
    sampled, exact = kernel.attribute(long_batch), exact_credits(rm, long_batch)
    assert float((sampled - exact).norm() / exact.norm()) < 0.1


# 38 kernel samples of 14 players can leave shap's regression singular; it warns and solves
# by least squares, which keeps the efficiency constraint.
@pytest.mark.filterwarnings("ignore:Linear regression equation is singular")
@pytest.mark.parametrize(
    ("algorithm", "max_evals"), [("partition", 20), ("permutation", 29), ("kernel", 40)]
)
def test_shap_conserves_on_a_small_budget(algorithm: str, max_evals: int, rm, long_batch) -> None:
    scorer = RewardScorer(rm)
    shap = make_attributor("shap", scorer, algorithm=algorithm, max_evals=max_evals)
    credits = shap.attribute(long_batch)
    assert scorer.stats.rows <= long_batch.size * max_evals
    target = long_batch.scores - empty_values(rm, long_batch)
    torch.testing.assert_close(credits.sum(1), target, atol=1e-4, rtol=0)
    assert not shap.residuals  # conserving: nothing was rescaled


def test_lime_is_rescaled_to_the_return_and_reports_the_residual(rm, batch) -> None:
    lime = make_attributor("lime", RewardScorer(rm))
    credits = lime.attribute(batch)
    target = batch.scores - empty_values(rm, batch)
    torch.testing.assert_close(credits.sum(1), target, atol=1e-4, rtol=0)
    lime.attribute(batch)
    assert len(lime.residuals) == 2  # one per batch
    residual = lime.metrics()["shaping/lime_conservation_residual"]
    assert 0 < residual < 1  # LIME's ridge coefficients miss the return, but not wildly


def test_lime_seed_changes_the_samples(rm, batch) -> None:
    a = make_attributor("lime", RewardScorer(rm), seed=0).attribute(batch)
    b = make_attributor("lime", RewardScorer(rm), seed=1).attribute(batch)
    assert not torch.allclose(a, b)


def test_shap_leaves_numpy_global_random_state_alone(rm, long_batch) -> None:
    np.random.seed(123)
    state = np.random.get_state()
    make_attributor("shap", RewardScorer(rm), algorithm="permutation").attribute(long_batch)
    after = np.random.get_state()
    assert after[0] == state[0] and np.array_equal(after[1], state[1]) and after[2:] == state[2:]


class CountingScorer(RewardScorer):
    """Records the number of rows in each coalition_values request."""

    def __init__(self, rm) -> None:
        super().__init__(rm)
        self.requests: list[int] = []

    def coalition_values(self, batch, coalitions):
        self.requests.append(sum(int(c.shape[0]) for c in coalitions))
        return super().coalition_values(batch, coalitions)


def test_lime_scores_all_samples_of_a_response_in_one_request(rm, batch) -> None:
    scorer = CountingScorer(rm)
    make_attributor("lime", scorer, num_samples=200).attribute(batch)
    # One request per response: its unique samples (<= 200) and v(empty), the offset.
    assert len(scorer.requests) == batch.size
    assert all(n > 1 for n in scorer.requests)
    assert scorer.stats.forwards <= batch.size
    assert scorer.stats.rows > 5 * scorer.stats.forwards


@pytest.mark.parametrize(("batch_name", "num_samples"), [("batch", 50), ("long_batch", 5)])
def test_lime_scores_each_coalition_once_the_empty_one_included(
    batch_name: str, num_samples: int, rm, request
) -> None:
    """Rows = the distinct coalitions LIME drew, plus v(empty) only where LIME did not draw
    it, less the full coalition (the batch's R)."""
    batch = request.getfixturevalue(batch_name)
    scorer = RewardScorer(rm)
    lime = make_attributor("lime", scorer, num_samples=num_samples)
    assert isinstance(lime, LimeAttributor)
    drawn: list[set[tuple[bool, ...]]] = []  # per response, the coalitions LIME asked for
    explain = lime.explainer.explain_instance

    def recording_explain(text, classifier_fn, **kwargs):
        def recording(texts):
            drawn.append({tuple(w != MASK_WORD for w in s.split(" ")) for s in texts})
            return classifier_fn(texts)

        return explain(text, recording, **kwargs)

    lime.explainer.explain_instance = recording_explain
    credits = lime.attribute(batch)
    empty = [(False,) * int(T) for T in batch.lengths]
    full = [(True,) * int(T) for T in batch.lengths]
    if batch_name == "batch":  # LIME drew the empty coalition itself: it costs no extra row
        assert all(e in d for e, d in zip(empty, drawn, strict=True))
    else:  # it did not: one row for it
        assert not any(e in d for e, d in zip(empty, drawn, strict=True))
    needed = [(d | {e}) - {f} for d, e, f in zip(drawn, empty, full, strict=True)]
    assert scorer.stats.rows == sum(map(len, needed))
    target = batch.scores - empty_values(rm, batch)
    torch.testing.assert_close(credits.sum(1), target, atol=1e-4, rtol=0)


def test_shap_partition_scores_a_tree_level_per_request(rm, long_batch) -> None:
    scorer = CountingScorer(rm)
    make_attributor("shap", scorer).attribute(long_batch)
    depth = math.ceil(math.log2(14))
    # Per response: v(empty), v(N) (free), then one request per level of the span tree.
    assert len(scorer.requests) == long_batch.size * (depth + 2)
    assert scorer.stats.forwards <= long_batch.size * (depth + 1)
    assert scorer.stats.rows > 10 * scorer.stats.forwards


def test_shap_permutation_scores_each_coalition_once(rm, batch) -> None:
    scorer = RewardScorer(rm)
    make_attributor("shap", scorer, algorithm="permutation").attribute(batch)
    # 500 evaluations are ~38 permutations of the 6-token response, over only 2^6 coalitions.
    at_most = sum(2 ** int(n) - 1 for n in batch.lengths)  # every coalition but the full one
    assert scorer.stats.rows <= at_most


@pytest.mark.parametrize("T", range(1, 10))
def test_span_tree_is_a_balanced_tree_of_contiguous_spans(T: int) -> None:
    tree = span_tree(T)
    assert tree.shape == (T - 1, 4)
    if T == 1:
        return
    assert is_valid_linkage(tree)
    assert leaves_list(tree).tolist() == list(range(T))  # spans: leaves stay in order
    assert tree[-1, 2] == math.ceil(math.log2(T)) and tree[-1, 3] == T


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        (
            "shap",
            {"algorithm": "exact"},
            r"shap\.algorithm='exact' is invalid \(give one of 'partition', 'permutation', 'kernel'",
        ),
        ("shap", {"max_evals": 2}, r"shap\.max_evals=2 is invalid \(give an integer >= 3"),
        ("shap", {"max_evals": 50.0}, r"shap\.max_evals=50\.0 is invalid"),
        ("lime", {"num_samples": 1}, r"lime\.num_samples=1 is invalid \(give an integer >= 2"),
        (
            "lime",
            {"num_features": 3},
            r"lime\.num_features is not an option \(the options of 'lime': num_samples, seed\)",
        ),
    ],
)
def test_bad_options_are_refused(name: str, options: dict, message: str, rm) -> None:
    with pytest.raises(ValueError, match=message):
        make_attributor(name, RewardScorer(rm), **options)


def test_permutation_budget_too_small_for_a_response(rm, long_batch) -> None:
    shap = make_attributor("shap", RewardScorer(rm), algorithm="permutation", max_evals=20)
    with pytest.raises(ValueError, match=r"max_evals=20 is below the 29 evaluations"):
        shap.attribute(long_batch)
