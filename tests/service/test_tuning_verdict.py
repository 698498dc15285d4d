"""The sentence that says whether the best shape beat pure sparse: Student's t intervals over
few seeds, the three outcomes, the direction of the objective, and the paired gain over the
study's own seeds."""

from __future__ import annotations

import math
import statistics
from datetime import UTC, datetime

import pytest
from scipy import stats

from service.api.schemas import Arm, ReevaluatedArm, Reevaluation
from service.tuning.verdict import estimate, gain, sentence


def test_the_interval_is_students_t_over_the_seeds() -> None:
    values = [0.1, 0.4, 0.25]
    found = estimate(values)
    se = statistics.stdev(values) / math.sqrt(3)
    half = stats.t.ppf(0.975, 2) * se  # 4.30 standard errors at 3 seeds, not 1.96
    assert found.mean == pytest.approx(0.25) and found.stderr == pytest.approx(se)
    assert (found.low, found.high) == pytest.approx((0.25 - half, 0.25 + half))
    assert half == pytest.approx(4.303 * se, rel=1e-3)


@pytest.mark.parametrize(
    ("values", "mean", "stderr"),
    [([0.3], 0.3, None), ([0.3, None], None, None), ([0.3, float("nan")], None, None)],
)
def test_no_interval_from_one_seed_or_a_missing_one(
    values: list[float | None], mean: float | None, stderr: float | None
) -> None:
    found = estimate(values)
    assert (found.mean, found.stderr, found.low, found.high) == (mean, stderr, None, None)


def _reevaluation(difference: list[float] | None, objective: str = "auc") -> Reevaluation:
    shaped = {"sparse": 0.2, "red": 0.8}
    arms = [
        ReevaluatedArm(
            trial=4,
            label="incumbent" if difference else "pure sparse",
            weights=shaped if difference else {"sparse": 1.0},
            knobs={},
            study_value=0.5,
            study_stderr=0.1,
            values=[0.5, 0.6],
            mean=0.55,
            stderr=0.05,
        )
    ]
    return Reevaluation(
        objective=objective,
        seeds=[10000 + k for k in range(len(difference or [0, 0]))],
        arms=arms,
        difference=None if difference is None else estimate(difference),
        finished_at=datetime.now(UTC),
    )


@pytest.mark.parametrize(
    ("difference", "objective", "direction", "expected"),
    [
        (
            [0.30, 0.32, 0.28, 0.31],
            "auc",
            "maximize",
            "the best shape (sparse=0.20, red=0.80) beats pure sparse by 0.3025 held-out "
            "reward averaged over training, 95 % CI [+0.2753, +0.3297] of the difference, "
            "over 4 fresh seeds",
        ),
        (
            [-0.30, -0.32, -0.28, -0.31],
            "final",
            "maximize",
            "pure sparse beats the best shape (sparse=0.20, red=0.80) by 0.3025 final "
            "held-out reward, 95 % CI [-0.3297, -0.2753] of the difference, over 4 fresh seeds",
        ),
        (
            [0.3, -0.1, 0.2, -0.2],
            "auc",
            "maximize",
            "no shape beat pure sparse beyond noise: the best shape (sparse=0.20, red=0.80) "
            "minus pure sparse is +0.0500 held-out reward averaged over training, 95 % CI "
            "[-0.3288, +0.4288], over 4 fresh seeds",
        ),
        (  # fewer steps to the target is better
            [-3.0, -5.0, -4.0],
            "steps_to_target",
            "minimize",
            "the best shape (sparse=0.20, red=0.80) beats pure sparse by 4.0000 PPO steps to "
            "the target reward, 95 % CI [-6.4841, -1.5159] of the difference, over 3 fresh seeds",
        ),
    ],
)
def test_the_sentence_says_who_won_and_how_sure(
    difference: list[float], objective: str, direction: str, expected: str
) -> None:
    assert sentence(_reevaluation(difference, objective), direction) == expected


def test_when_pure_sparse_is_the_incumbent_no_shape_beat_it() -> None:
    said = sentence(_reevaluation(None), "maximize")
    assert said == (
        "pure sparse is the study's best arm: no shape beat it (held-out reward averaged "
        "over training 0.5500 ± 0.0500 over 2 fresh seeds)"
    )


def _arm(trial: int, seed_values: list[float | None]) -> Arm:
    return Arm(
        trial=trial,
        label="",
        weights={"sparse": 1.0},
        knobs={},
        value=statistics.fmean(v for v in seed_values if v is not None),
        stderr=None,
        seed_values=seed_values,
        state="COMPLETE",
    )


def test_the_gain_over_the_study_seeds_is_paired_by_seed() -> None:
    found = gain(_arm(3, [0.5, 0.9, 0.4]), _arm(0, [0.3, 0.8, 0.1]))
    assert found is not None and found.values == pytest.approx([0.2, 0.1, 0.3])
    assert (found.mean, found.stderr) == pytest.approx((0.2, 0.1 / math.sqrt(3)))
    assert gain(_arm(0, [0.3, 0.8]), _arm(0, [0.3, 0.8])) is None  # the same trial
    assert gain(_arm(3, [0.5]), _arm(0, [0.3, 0.8])) is None  # seeds that do not pair
    one_missing = gain(_arm(3, [0.5, None]), _arm(0, [0.3, 0.8]))
    assert one_missing is not None and one_missing.mean is None and one_missing.low is None
