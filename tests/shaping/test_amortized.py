"""Amortized credit on the synthetic game, whose Shapley values are known in closed form."""

from __future__ import annotations

import pytest
import torch

from shaping.attribution import build_attributor, make_attributor
from shaping.attribution.amortized import AmortizedAttributor
from shaping.batch import RolloutBatch
from shaping.scorer import RewardScorer
from shaping.shaper import Shaper
from trainers.tasks.synthetic import SyntheticReward, SyntheticTask

B, T = 32, 6
EXACT = ("shapley", {"max_exact_players": 16})
"""Exact Shapley values: a teacher without sampling noise. (Sampled ones are exact too on
this game: an antithetic pair of permutations splits a pairwise interaction evenly.)"""
NOISY = ("lime", {"num_samples": 16})
"""LIME on 16 samples: labels with sampling noise."""


def game(interaction: float) -> tuple[SyntheticTask, SyntheticReward]:
    task = SyntheticTask(n_words=16, response_length=T, interaction=interaction, seed=3)
    return task, task.load_reward_model()


def batches(task: SyntheticTask, scorer: RewardScorer, n: int, seed: int = 0):
    """`n` batches of B random responses of T words, scored as PPO scores them (the scorer
    keeps the RM's hidden states of each)."""
    g = torch.Generator().manual_seed(seed)
    prompts = task.prompts("train")
    for _ in range(n):
        chosen = [prompts[k] for k in torch.randint(len(prompts), (B,), generator=g).tolist()]
        responses = torch.randint(3, len(task.tokenizer), (B, T), generator=g).tolist()
        scores = scorer.score_responses(chosen, responses)
        yield RolloutBatch.from_lists(chosen, responses, scores.tolist(), pad_id=1)


def truth(rm: SyntheticReward, batch: RolloutBatch) -> torch.Tensor:
    return torch.stack([rm.exact_shapley(batch.prompt(i), batch.response(i)) for i in range(B)])


def network_error(amortized: AmortizedAttributor, rm: SyntheticReward, batch) -> float:
    """RMS error of the network's own output (before any correction) against the truth."""
    states = amortized.scorer.response_states(batch)
    guess = amortized._forward(states, T)
    return float((guess - truth(rm, batch)).square().mean().sqrt())


def amortized_on(rm: SyntheticReward, teacher: tuple[str, dict], **options) -> AmortizedAttributor:
    name, taught = teacher
    options = {"amortized": {"teacher": name, **options}, name: taught}
    attributor = build_attributor("amortized", RewardScorer(rm), options)
    assert isinstance(attributor, AmortizedAttributor)
    return attributor


def test_it_learns_an_additive_game_exactly() -> None:
    task, rm = game(interaction=0.0)
    amortized = amortized_on(rm, EXACT, label_fraction=0.25, seed=1)
    for batch in batches(task, amortized.scorer, 60):
        amortized.attribute(batch)
    (held_out,) = batches(task, amortized.scorer, 1, seed=99)
    scale = float(truth(rm, held_out).square().mean().sqrt())
    assert network_error(amortized, rm, held_out) < 0.05 * scale


def test_its_error_on_a_game_with_interactions_falls_with_steps() -> None:
    task, rm = game(interaction=0.8)
    amortized = amortized_on(rm, EXACT, seed=2)
    (held_out,) = batches(task, amortized.scorer, 1, seed=99)
    errors = []
    for step, batch in enumerate(batches(task, amortized.scorer, 60), start=1):
        amortized.attribute(batch)
        if step in (2, 15, 60):
            errors.append(network_error(amortized, rm, held_out))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.8 * errors[0]


def test_it_falls_back_to_the_teacher_until_it_beats_one_label() -> None:
    """Noisy labels: the whole batch from the teacher at first, the network's credits for
    most of it once its error is below the teacher's; then labelled responses cost the
    teacher's rows, the rest one row each (v(empty)), their hidden states none (they come
    from the scoring pass)."""
    task, rm = game(interaction=0.0)
    amortized = amortized_on(rm, NOISY, label_fraction=0.125, seed=4)
    trace, rows = [], 0
    for batch in batches(task, amortized.scorer, 40):
        before = amortized.scorer.stats.rows
        amortized.attribute(batch)
        rows = amortized.scorer.stats.rows - before
        m = amortized.metrics()
        trace.append((m["shaping/amortized_fallback"], m["shaping/amortized_labelled"]))
    assert trace[0] == (1.0, 1.0)  # nothing learned yet: the teacher labels everything
    assert trace[-1] == (0.0, 4 / B)  # learned: the teacher labels its fraction only
    switched = next(k for k, (fallback, _) in enumerate(trace) if not fallback)
    m = amortized.metrics()
    assert m["shaping/amortized_error"] < m["shaping/amortized_teacher_error"]
    assert 0 < switched < 40
    assert rows <= (4 + 1) * 16 + (B - 4)  # LIME's samples (and maybe a probe's), v(empty)


def test_an_exact_teacher_is_never_replaced() -> None:
    """An exact teacher has no noise to beat: the network can only be worse."""
    task, rm = game(interaction=0.8)
    amortized = amortized_on(rm, EXACT, seed=5)
    for batch in batches(task, amortized.scorer, 5):
        amortized.attribute(batch)
        assert amortized.metrics()["shaping/amortized_fallback"] == 1.0
    assert amortized.metrics()["shaping/amortized_teacher_error"] == 0.0


def test_credits_sum_to_the_teachers_total_to_float_precision() -> None:
    """Every response's credits sum to R - v(empty), network's or teacher's, and the
    residual the correction removed is reported."""
    task, rm = game(interaction=0.0)
    amortized = amortized_on(rm, NOISY, label_fraction=0.125, seed=4)
    for batch in batches(task, amortized.scorer, 24):
        credits = amortized.attribute(batch)
        empty = [torch.zeros(1, T, dtype=torch.bool)] * B
        v_empty = torch.cat(RewardScorer(rm).coalition_values(batch, empty))
        torch.testing.assert_close(credits.sum(1), batch.scores - v_empty, atol=1e-5, rtol=0)
    assert amortized.residuals  # the network's credits were used, and corrected
    assert amortized.metrics()["shaping/amortized_conservation_residual"] > 0


def test_a_restored_state_continues_as_the_uninterrupted_one() -> None:
    task, rm = game(interaction=0.0)
    whole = amortized_on(rm, NOISY, label_fraction=0.125, seed=4)
    part = amortized_on(rm, NOISY, label_fraction=0.125, seed=4)
    stream = list(batches(task, RewardScorer(rm), 8))
    for batch in stream[:4]:
        whole.attribute(batch)
        part.attribute(batch)
    saved = part.state()
    resumed = amortized_on(rm, NOISY, label_fraction=0.125, seed=4)
    resumed.load_state(saved)
    for batch in stream[4:]:
        torch.testing.assert_close(resumed.attribute(batch), whole.attribute(batch))
    assert not resumed.fallback  # the network's credits were compared, not only the teacher's


def test_the_teacher_takes_its_own_options_and_a_seed_of_its_own() -> None:
    _, rm = game(interaction=0.8)
    amortized = amortized_on(rm, ("shapley", {"permutations": 4}), seed=8)
    assert amortized.teacher.name == "shapley"
    assert vars(amortized.teacher)["permutations"] == 4
    lime = make_attributor("amortized", RewardScorer(rm), teacher="lime")
    assert isinstance(lime, AmortizedAttributor) and lime.teacher.name == "lime"
    shaper = Shaper(RewardScorer(rm), {"amortized": 1.0}, {"shapley": {"unit": "word"}})
    teacher = shaper.attributors["amortized"].teacher  # type: ignore[attr-defined]
    assert vars(teacher)["unit"] == "word"


def test_label_fraction_zero_is_refused() -> None:
    _, rm = game(interaction=0.8)
    with pytest.raises(ValueError, match="label_fraction must be > 0"):
        make_attributor("amortized", RewardScorer(rm), label_fraction=0.0)


@pytest.mark.parametrize(("error_ratio", "in_use"), [(0.0, [0, 0, 0, 0]), (1000.0, [0, 1, 1, 1])])
def test_error_ratio_sets_how_good_the_network_must_be(error_ratio: float, in_use: list) -> None:
    """0: never trusted (the teacher always); 1000: trusted as soon as it is measured (the
    second step: the first has no network to measure yet)."""
    task, rm = game(interaction=0.8)
    amortized = amortized_on(rm, NOISY, seed=9, error_ratio=error_ratio)
    trace = []
    for batch in batches(task, amortized.scorer, 4):
        amortized.attribute(batch)
        trace.append(int(not amortized.fallback))
    assert trace == in_use
