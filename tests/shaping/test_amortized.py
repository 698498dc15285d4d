"""Amortized Shapley credit on the synthetic game, whose Shapley values are known in closed
form: the FastSHAP maths, the online network, the audits, and the explainer stage."""

from __future__ import annotations

import math
import threading
from pathlib import Path

import pytest
import torch

from shaping.attribution import build_attributor, make_attributor
from shaping.attribution.amortized import AmortizedAttributor
from shaping.batch import RolloutBatch
from shaping.explainer import efficient, fastshap_loss, kernel_coalitions, refine, relative_error
from shaping.scorer import RewardScorer
from shaping.shaper import Shaper
from trainers import explainer as stage
from trainers.explainer import ExplainerSettings, ensure_explainer
from trainers.tasks.synthetic import SyntheticReward, SyntheticTask

B, T = 32, 6


def game(interaction: float) -> tuple[SyntheticTask, SyntheticReward]:
    task = SyntheticTask(n_words=16, response_length=T, interaction=interaction, seed=3)
    return task, task.load_reward_model()


def batches(task: SyntheticTask, scorer: RewardScorer, n: int, seed: int = 0):
    """`n` batches of B random responses of T words, scored as PPO scores them (the scorer
    keeps the RM's hidden states and prefix scores of each)."""
    g = torch.Generator().manual_seed(seed)
    prompts = task.prompts("train")
    for _ in range(n):
        chosen = [prompts[k] for k in torch.randint(len(prompts), (B,), generator=g).tolist()]
        responses = torch.randint(3, len(task.tokenizer), (B, T), generator=g).tolist()
        scores = scorer.score_responses(chosen, responses)
        yield RolloutBatch.from_lists(chosen, responses, scores.tolist(), pad_id=1)


def truth(rm: SyntheticReward, batch: RolloutBatch) -> torch.Tensor:
    return torch.stack([rm.exact_shapley(batch.prompt(i), batch.response(i)) for i in range(B)])


def amortized_on(rm: SyntheticReward, **options) -> AmortizedAttributor:
    attributor = build_attributor("amortized", RewardScorer(rm), {"amortized": options})
    assert isinstance(attributor, AmortizedAttributor)
    return attributor


# -- the maths ---------------------------------------------------------------------------


def test_kernel_coalitions_follow_the_shapley_kernel_in_complement_pairs() -> None:
    M, pairs = 8, 20_000
    drawn = kernel_coalitions(M, pairs, torch.Generator().manual_seed(0))
    assert drawn.shape == (2 * pairs, M)
    assert torch.equal(drawn[pairs:], ~drawn[:pairs])
    sizes = torch.bincount(drawn[:pairs].sum(1), minlength=M + 1)[1:M].double()
    kernel = torch.tensor([1 / (s * (M - s)) for s in range(1, M)], dtype=torch.float64)
    torch.testing.assert_close(sizes / pairs, kernel / kernel.sum(), atol=0.01, rtol=0)
    assert sizes.min() > 0 and drawn[:pairs].any(1).all() and (~drawn[:pairs]).any(1).all()
    assert kernel_coalitions(1, 4, torch.Generator()).shape == (0, 1)  # nothing in between


def test_the_fastshap_objective_is_least_at_the_exact_shapley_values() -> None:
    """Over every coalition, weighted by the kernel's probabilities, the efficient credits
    that minimise the loss are the game's Shapley values, interactions and all."""
    task, rm = game(interaction=0.8)
    (batch,) = batches(task, RewardScorer(rm), 1)
    coalitions = (torch.arange(1, 2**T - 1)[:, None] >> torch.arange(T)) & 1 == 1  # (K, T)
    size = coalitions.sum(1).double()
    kernel = 1 / (size * (T - size) * torch.tensor([math.comb(T, int(s)) for s in size]))
    scorer = RewardScorer(rm)
    empty = torch.zeros(1, T, dtype=torch.bool)
    (values,) = scorer.coalition_values(batch.select([0]), [torch.cat([empty, coalitions])])
    gains, total = values[1:] - values[0], batch.scores[0] - values[0]
    mask = torch.ones(1, T, dtype=torch.bool)

    def loss(credits: torch.Tensor) -> float:
        phi = efficient(credits[None], total[None], mask)
        return float(fastshap_loss(phi, coalitions[None], gains[None], kernel[None].float()))

    exact = rm.exact_shapley(batch.prompt(0), batch.response(0))
    torch.testing.assert_close(exact.sum(), total, atol=1e-5, rtol=0)
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        assert loss(exact) < loss(exact + 0.05 * torch.randn(T, generator=g))


def test_refine_fits_the_rows_keeps_the_sum_and_with_no_rows_is_the_guess() -> None:
    """An additive game: every coalition's gain is the sum of its credits. Given all
    coalitions and a weak prior, the refined credits are the game's; given none, the
    guess moved to the right sum; always they sum to the total."""
    g = torch.Generator().manual_seed(0)
    credits, guess = torch.randn(T, generator=g), torch.randn(T, generator=g)
    total = float(credits.sum())
    every = (torch.arange(1, 2**T - 1)[:, None] >> torch.arange(T)) & 1 == 1
    gains = (every.float() * credits).sum(1)
    torch.testing.assert_close(refine(guess, every, gains, total, 1e-6), credits, atol=1e-4, rtol=0)
    none = refine(guess, every[:0], gains[:0], total, 1.0)
    torch.testing.assert_close(none, guess + (total - guess.sum()) / T)
    some = refine(guess, every[:5], gains[:5], total, 1.0)
    torch.testing.assert_close(some.sum(), torch.tensor(total), atol=1e-5, rtol=0)
    assert relative_error(some, credits) < relative_error(none, credits)  # rows help


# -- the method --------------------------------------------------------------------------


def test_online_it_learns_an_additive_game_from_its_own_rows() -> None:
    task, rm = game(interaction=0.0)
    amortized = amortized_on(rm, pairs=1, audit_every=0, lr=3e-3, seed=1)
    errors = []
    for batch in batches(task, amortized.scorer, 80):
        errors.append(relative_error(amortized.attribute(batch), truth(rm, batch)))
    assert errors[-1] < 0.1 < errors[0]
    # The score, and its states and prefix scores read back from the same pass: 3 asked for.
    rows = amortized.scorer.stats.requested_rows - 80 * B * 3
    assert rows == 80 * B * 3  # v(empty) and one pair: 3 rows a response


def test_credits_sum_to_r_minus_v_empty_to_float_precision() -> None:
    task, rm = game(interaction=0.8)
    amortized = amortized_on(rm, pairs=2, seed=4)
    for batch in batches(task, amortized.scorer, 6):
        credits = amortized.attribute(batch)
        empty = [torch.zeros(1, T, dtype=torch.bool)] * B
        v_empty = torch.cat(RewardScorer(rm).coalition_values(batch, empty))
        torch.testing.assert_close(credits.sum(1), batch.scores - v_empty, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("target", "end"), [(0.0, 3), (10.0, 0)])
def test_audits_raise_the_rows_above_target_and_lower_them_well_below(
    target: float, end: int
) -> None:
    """target 0: every audit finds the credits too far from the teacher (one more pair each
    time, up to max_pairs); target 10: every audit finds them close (one fewer, down to
    none). An audit costs the teacher's rows on one response."""
    task, rm = game(interaction=0.8)
    amortized = amortized_on(rm, pairs=1, max_pairs=3, audit_every=2, target=target, seed=5)
    trace = []
    for batch in batches(task, amortized.scorer, 8):
        amortized.attribute(batch)
        trace.append(amortized.pairs)
    assert trace == ([1, 2, 2, 3, 3, 3, 3, 3] if end else [1, 0, 0, 0, 0, 0, 0, 0])
    metrics = amortized.metrics()
    assert metrics["shaping/amortized_audits"] == 4.0
    assert 0 < metrics["shaping/amortized_audit_error"] < 1


def test_a_restored_state_continues_as_the_uninterrupted_one() -> None:
    task, rm = game(interaction=0.8)
    options = {"pairs": 2, "audit_every": 2, "seed": 4}
    whole, part = amortized_on(rm, **options), amortized_on(rm, **options)
    stream = list(batches(task, RewardScorer(rm), 8))
    for batch in stream[:4]:
        whole.attribute(batch)
        part.attribute(batch)
    saved = part.state()
    resumed = amortized_on(rm, **options)
    resumed.load_state(saved)
    for batch in stream[4:]:
        torch.testing.assert_close(resumed.attribute(batch), whole.attribute(batch))
    timeless = [
        {k: v for k, v in a.metrics().items() if "seconds" not in k} for a in (resumed, whole)
    ]
    assert timeless[0] == pytest.approx(timeless[1], abs=1e-6, rel=1e-6)


def test_the_teacher_takes_its_own_options_and_a_seed_of_its_own() -> None:
    _, rm = game(interaction=0.8)
    options = {"amortized": {"seed": 8}, "shapley": {"permutations": 4}}
    amortized = build_attributor("amortized", RewardScorer(rm), options)
    assert isinstance(amortized, AmortizedAttributor) and amortized.teacher.name == "shapley"
    assert vars(amortized.teacher)["permutations"] == 4
    shaper = Shaper(RewardScorer(rm), {"amortized": 1.0}, {"shapley": {"unit": "word"}})
    teacher = shaper.attributors["amortized"].teacher  # type: ignore[attr-defined]
    assert vars(teacher)["unit"] == "word"


def test_more_starting_pairs_than_the_most_allowed_is_refused() -> None:
    _, rm = game(interaction=0.8)
    with pytest.raises(ValueError, match=r"amortized.pairs=4 is above amortized.max_pairs=2"):
        make_attributor("amortized", RewardScorer(rm), pairs=4, max_pairs=2)


# -- the explainer stage -----------------------------------------------------------------

SMALL = ExplainerSettings(responses=384, pairs=4, epochs=12)


def test_a_trained_explainer_starts_a_run_closer_to_the_truth(tmp_path: Path) -> None:
    """Trained once on the initial policy's responses, the explainer's first credits (no
    rows of their own: pairs 0) are better than an untrained network's, and a second ask
    finds it cached."""
    task, rm = game(interaction=0.8)
    built = ensure_explainer(task, T, tmp_path, SMALL)
    # A score and v(empty) a response, and 4 pairs (fewer where a coalition came twice).
    assert built.built and 384 * 2 < built.info["rm_rows"] <= 384 * (2 + 2 * 4)
    assert built.info["held_out_r2"] > 0.5
    (batch,) = batches(task, RewardScorer(rm), 1, seed=99)
    errors = {}
    for name, pretrained in (("trained", True), ("fresh", False)):
        amortized = amortized_on(rm, pairs=0, audit_every=0, lr=0.0)
        if pretrained:
            amortized.use_explainer(built.net)
        amortized.scorer.score_responses(
            [batch.prompt(i) for i in range(B)], [batch.response(i) for i in range(B)]
        )
        errors[name] = relative_error(amortized.attribute(batch), truth(rm, batch))
    assert errors["trained"] < 0.5 * errors["fresh"]
    again = ensure_explainer(task, T, tmp_path, SMALL)
    assert not again.built and again.folder == built.folder


def test_runs_starting_together_build_one_explainer(tmp_path: Path, monkeypatch) -> None:
    """Two workers asking at once: one builds, the other waits and reuses it; another
    response length or other settings is another explainer."""
    task, _ = game(interaction=0.8)
    builds = []
    real = stage.build_explainer

    def counted(*args, **kwargs):
        builds.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(stage, "build_explainer", counted)
    asks = [
        threading.Thread(target=ensure_explainer, args=(task, T, tmp_path, SMALL)) for _ in range(2)
    ]
    for ask in asks:
        ask.start()
    for ask in asks:
        ask.join()
    assert len(builds) == 1
    ensure_explainer(task, T - 1, tmp_path, SMALL)
    assert len(builds) == 2
