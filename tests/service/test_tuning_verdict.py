"""The sentence that says whether the best shape beat pure sparse: Student's t intervals over
few seeds, the four outcomes, the seeds that would decide an undecided one, the race's wider
intervals, pooled spreads for 2 seeds, the direction of the objective, and the paired gain
over the study's own seeds."""

from __future__ import annotations

import math
import statistics
from datetime import UTC, datetime

import pytest
from scipy import stats

from service.read.schemas import Arm, ReevaluatedArm, Reevaluation
from service.read.verdicts import gain, sentence
from service.tuning.search.pairing import pool
from service.tuning.study.verdict import decide, estimate, race_level, seeds_to_decide


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


def _reevaluation(
    difference: list[float] | None,
    objective: str = "auc",
    direction: str = "maximize",
    margin: float = 0.1,
    level: float = 0.95,
) -> Reevaluation:
    shaped = {"sparse": 0.2, "red": 0.8}
    arms = [
        ReevaluatedArm(
            trial=4,
            label="best shape" if difference else "pure sparse",
            weights=shaped if difference else {"sparse": 1.0},
            knobs={},
            study_value=0.5,
            study_stderr=0.1,
            values=[0.5, 0.6],
            mean=0.55,
            stderr=0.05,
        )
    ]
    d = None if difference is None else estimate(difference, level)
    decision = decide(d, margin, direction, level) if d is not None else None
    return Reevaluation(
        objective=objective,
        seeds=[10000 + k for k in range(len(difference or [0, 0]))],
        arms=arms,
        difference=d,
        finished_at=datetime.now(UTC),
        level=level,
        margin=margin,
        outcome=decision.outcome if decision else "",
        more_seeds=decision.more_seeds if decision else None,
    )


@pytest.mark.parametrize(
    ("difference", "objective", "direction", "expected"),
    [
        (
            [0.30, 0.32, 0.28, 0.31],
            "auc",
            "maximize",
            "the best shape (sparse=0.20, red=0.80) beats pure sparse by 0.3025 held-out "
            "reward averaged over training, 95 % CI [+0.2753, +0.3297], over 4 fresh seeds",
        ),
        (
            [-0.30, -0.32, -0.28, -0.31],
            "final",
            "maximize",
            "pure sparse beats the best shape (sparse=0.20, red=0.80) by 0.3025 final "
            "held-out reward, 95 % CI [-0.3297, -0.2753], over 4 fresh seeds",
        ),
        (
            [0.01, -0.02, 0.015, -0.01],
            "auc",
            "maximize",
            "the best shape (sparse=0.20, red=0.80) and pure sparse are equivalent within "
            "±0.1000 held-out reward averaged over training: the difference is -0.0013, "
            "95 % CI [-0.0275, +0.0250], over 4 fresh seeds",
        ),
        (
            [0.3, -0.1, 0.2, -0.2],
            "auc",
            "maximize",
            "undecided after 4 fresh seeds: the best shape (sparse=0.20, red=0.80) minus pure "
            "sparse is +0.0500 held-out reward averaged over training, 95 % CI [-0.3288, "
            "+0.4288], neither beyond 0 nor within ±0.1000; about 86 more would decide it at "
            "the observed spread",
        ),
        (  # fewer steps to the target is better
            [-3.0, -5.0, -4.0],
            "steps_to_target",
            "minimize",
            "the best shape (sparse=0.20, red=0.80) beats pure sparse by 4.0000 PPO steps to "
            "the target reward, 95 % CI [-6.4841, -1.5159], over 3 fresh seeds",
        ),
    ],
)
def test_one_of_four_sentences_says_who_won_and_how_sure(
    difference: list[float], objective: str, direction: str, expected: str
) -> None:
    assert sentence(_reevaluation(difference, objective, direction), direction) == expected


def test_more_seeds_at_the_same_spread_decide_it() -> None:
    values = [0.3, -0.1, 0.2, -0.2]
    more = seeds_to_decide(values, 0.1, 0.95)
    assert more is not None
    mean, sd = statistics.fmean(values), statistics.stdev(values)

    def half(n: int) -> float:
        return float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)

    room = max(abs(mean), 0.1 - abs(mean))
    assert half(4 + more) < room <= half(4 + more - 1)


def test_a_race_spends_its_five_percent_over_looks_and_shapes() -> None:
    assert race_level(1, 1, 1) == pytest.approx(0.95)  # one look, one shape: a plain test
    # Before the last look an early stop needs overwhelming evidence; the last keeps the rest.
    assert race_level(1, 4, 1) == pytest.approx(0.999)
    assert race_level(4, 4, 1) == pytest.approx(1 - (0.05 - 3 * 0.001))
    assert race_level(4, 4, 2) == pytest.approx(1 - (0.05 - 3 * 0.001) / 2)  # two shapes
    total = sum(1 - race_level(k, 60, 1) for k in range(1, 61))  # many looks: still 5 %
    assert total == pytest.approx(0.05) and race_level(60, 60, 1) <= 0.975
    said = sentence(_reevaluation([0.30, 0.32, 0.28, 0.31], level=race_level(4, 4, 1)), "maximize")
    assert "95.3 % CI" in said and "95% together" in said


def test_a_record_kept_before_races_reads_without_margin() -> None:
    said = sentence(_reevaluation(None), "maximize")
    assert said == (
        "pure sparse is the study's best arm: no shape beat it (held-out reward averaged "
        "over training 0.5500 ± 0.0500 over 2 fresh seeds)"
    )


def test_two_seeds_borrow_the_pooled_spread() -> None:
    pooled = pool([[0.1, 0.3, 0.2], [0.0, 0.4]])
    assert pooled is not None and pooled.dof == 3
    found = estimate([0.2, 0.3], pooled=pooled)
    assert found.pooled_dof == 3
    assert found.stderr == pytest.approx(math.sqrt(pooled.variance / 2))
    own = estimate([0.2, 0.3, 0.1], pooled=pooled)  # three seeds: their own spread
    assert own.pooled_dof is None and own.stderr == pytest.approx(0.1 / math.sqrt(3))


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
