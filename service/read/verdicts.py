"""The tuning's statistics in the words a user reads: the study's gain over sparse on its own
seeds, and the race's verdict as one of four sentences."""

from __future__ import annotations

from service.formatting import interval, number, weights
from service.read.schemas import Arm, Reevaluation
from service.tuning.search.pairing import Pooled, paired
from service.tuning.study.verdict import (
    LEVEL,
    MAX_SEEDS_ESTIMATE,
    OBJECTIVE_WORDS,
    Estimate,
    estimate,
)


def gain(best: Arm, sparse: Arm, pooled: Pooled | None = None) -> Estimate | None:
    """The incumbent minus pure sparse over the study's own seeds, paired by seed; None when
    they are the same trial or their seeds do not pair. Optimistic: the same seeds picked
    the incumbent (the race on fresh seeds is not)."""
    if best.trial == sparse.trial or len(best.seed_values) != len(sparse.seed_values):
        return None
    return estimate(paired(best.seed_values, sparse.seed_values), pooled=pooled)


def sentence(found: Reevaluation, direction: str) -> str:
    """What the race says, in one of four sentences: the best shape beats pure sparse, pure
    sparse beats it, they are equivalent within the margin, or undecided (and about how many
    more seeds would decide it)."""
    words = OBJECTIVE_WORDS.get(found.objective, found.objective)
    best, n, d = found.arms[0], len(found.seeds), found.difference
    if d is None:  # kept by a version that did not race a shape against sparse
        return (
            f"pure sparse is the study's best arm: no shape beat it ({words} "
            f"{number(best.mean)} ± {number(best.stderr)} over {n} fresh seeds)"
        )
    shape = f"the best shape ({weights(best.weights)})"
    if d.mean is None or d.low is None or d.high is None:
        return f"{shape} minus pure sparse: {number(d.mean, signed=True)}, too few seeds to say"
    ci = f"{_percent(found.level)} % CI {interval(d.low, d.high)}"
    if found.level > LEVEL:
        ci += f" (with the race's other looks and arms: {LEVEL:.0%} together)"
    margin, outcome = found.margin, found.outcome
    seeds = f"over {n} fresh seeds"
    by = f"{number(abs(d.mean))} {words}, {ci}, {seeds}"
    if outcome == "beats":
        return f"{shape} beats pure sparse by {by}"
    if outcome == "loses":
        return f"pure sparse beats {shape} by {by}"
    within = f"±{number(margin)}" if margin is not None else "the margin"
    if outcome == "equivalent":
        return (
            f"{shape} and pure sparse are equivalent within {within} {words}: the difference "
            f"is {number(d.mean, signed=True)}, {ci}, {seeds}"
        )
    more = (
        f"about {found.more_seeds} more would decide it at the observed spread"
        if found.more_seeds
        else f"more than {MAX_SEEDS_ESTIMATE} more would be needed at the observed spread"
    )
    return (
        f"undecided after {n} fresh seeds: {shape} minus pure sparse is "
        f"{number(d.mean, signed=True)} {words}, {ci}, neither beyond 0 nor within {within}; "
        f"{more}"
    )


def _percent(level: float) -> str:
    return f"{100 * level:.4g}"
