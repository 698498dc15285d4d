"""Whether a shape beats pure sparse, and how sure that is: differences of two arms paired by
seed, their confidence interval, and one of four verdicts a user acts on.

Seeds are few (2 to 16), so intervals are Student's t with n - 1 degrees of freedom, not the
normal one, which would be too narrow by a factor of up to 6 at two seeds. Pairing by seed is
right because every arm of a study trains seed k with the same prompts and initial draws and
is evaluated with the same sampling noise (common random numbers): the differences vary less
than either arm's values.

A race looks at its data after every round and may stop at any of them, and picks its best
shape among several: each look and each challenger is one more chance of a false verdict, so
the race's intervals are at the levels `race_level` gives (Haybittle-Peto over the looks,
Bonferroni over the shapes), which keep the chance of any false "beats" or "loses" within
1 - LEVEL.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Literal

from scipy import stats

from service.public import Public
from service.tuning.search.pairing import Pooled, variance

LEVEL = 0.95
OWN_SPREAD = 3
"""Values from which an estimate trusts its own spread rather than a pooled one."""
MAX_SEEDS_ESTIMATE = 1000
"""Past this many seeds `seeds_to_decide` says only that it is more."""

Outcome = Literal["beats", "loses", "equivalent", "undecided"]


class Estimate(Public):
    values: list[float | None]
    """One per seed."""
    mean: float | None
    stderr: float | None
    low: float | None = None
    high: float | None = None
    """The 95 % confidence interval of the mean (Student's t; null below 2 seeds)."""
    pooled_dof: int | None = None
    """Set when the values were too few for their own spread (under 3): the interval's
    spread is pooled over the study's paired differences, with these degrees of freedom."""


OBJECTIVE_WORDS = {
    "auc": "held-out reward averaged over training",
    "final": "final held-out reward",
    "steps_to_target": "PPO steps to the target reward",
}


def estimate(
    values: Sequence[float | None], level: float = LEVEL, pooled: Pooled | None = None
) -> Estimate:
    """Mean, standard error and the t interval at `level` of `values` (the interval only for
    2 or more finite values). With `pooled` and fewer than OWN_SPREAD values, the spread is
    the study's pooled one: sound where every trial's paired differences vary alike (seed
    noise of PPO is much the same across the simplex), and a spread from 2 values is a
    guess (one degree of freedom)."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    if len(finite) != len(values) or not finite:
        return Estimate(values=list(values), mean=None, stderr=None)
    mean = statistics.fmean(finite)
    n = len(finite)
    pooled = pooled if pooled is not None and n < OWN_SPREAD else None
    if pooled is not None:
        se, dof = math.sqrt(pooled.variance / n), pooled.dof
    elif n >= 2:
        se, dof = math.sqrt(variance(finite) / n), n - 1
    else:
        return Estimate(values=list(values), mean=mean, stderr=None)
    half = _t(level, dof) * se
    return Estimate(
        values=list(values),
        mean=mean,
        stderr=se,
        low=mean - half,
        high=mean + half,
        pooled_dof=None if pooled is None else pooled.dof,
    )


@cache
def _t(level: float, dof: float) -> float:
    """Student's t quantile: a study's thousands of trials ask for the same few (level, dof),
    and scipy's ppf cost a 10,000-trial study page seconds."""
    return float(stats.t.ppf((1 + level) / 2, dof))


INTERIM_ALPHA = 0.001
"""The chance of a false verdict a race spends at each look before its last
(Haybittle-Peto): an early stop needs overwhelming evidence, and the last look keeps almost
all of 1 - LEVEL, so a race that runs to its seed cap is nearly as sharp as one fixed test."""


def race_level(look: int, looks: int, challengers: int) -> float:
    """The level of the race's intervals at look `look` (1-based) of `looks`, so that all of
    its verdicts, over every look and all `challengers` shapes, hold together at LEVEL:
    INTERIM_ALPHA at each look before the last, the rest at the last, each split evenly
    among the challengers (Bonferroni)."""
    alpha = 1 - LEVEL
    interim = min(INTERIM_ALPHA, alpha / (2 * looks))  # the last look keeps at least half
    spent = interim if look < looks else alpha - interim * (looks - 1)
    return 1 - spent / max(1, challengers)


def better(direction: str) -> int:
    """+1 when a higher objective is better, -1 when lower is."""
    return -1 if direction == "minimize" else 1


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    more_seeds: int | None = None
    """Undecided: about how many more seeds would decide it at the observed spread (None
    when more than MAX_SEEDS_ESTIMATE, or nothing to estimate from)."""


def decide(d: Estimate, margin: float, direction: str, level: float = LEVEL) -> Decision:
    """The verdict on a paired difference `d` (shape - sparse): beats or loses when its
    interval excludes 0, equivalent when it lies within +-margin, undecided otherwise."""
    if d.mean is None or d.low is None or d.high is None:
        return Decision("undecided", None)
    if d.low > 0 or d.high < 0:  # the interval excludes no difference
        return Decision("beats" if better(direction) * d.mean > 0 else "loses")
    if -margin <= d.low and d.high <= margin:
        return Decision("equivalent")
    values = [v for v in d.values if v is not None]
    return Decision("undecided", seeds_to_decide(values, margin, level))


def seeds_to_decide(values: Sequence[float], margin: float, level: float) -> int | None:
    """More seeds after `values` that, at their mean and spread, give an interval that
    excludes 0 or lies within +-margin (the smaller)."""
    n = len(values)
    if n < 2:
        return None
    mean, sd = abs(statistics.fmean(values)), statistics.stdev(values)
    room = max(mean, margin - mean)  # the half-width that would decide it
    if room <= 0:
        return None
    for total in range(n + 1, n + MAX_SEEDS_ESTIMATE + 1):
        if _t(level, total - 1) * sd / math.sqrt(total) < room:
            return total - n
    return None


def equivalence_margin(fraction: float, sparse_gains: Sequence[float]) -> float:
    """The margin within which a shape counts as equivalent to sparse: `fraction` of what
    sparse itself gained over the initial policy (mean over its runs)."""
    return fraction * abs(statistics.fmean(sparse_gains)) if sparse_gains else 0.0
