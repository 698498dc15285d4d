"""Whether the best shape beat pure sparse, and how sure that is: the difference of two arms
paired by seed, its 95 % confidence interval, and one sentence a user reads.

Seeds are few (2 to 8), so the interval is Student's t with n - 1 degrees of freedom, not
the normal one, which would be too narrow by a factor of up to 6 at two seeds. Pairing by
seed is right because every arm of a study trains seed k with the same prompts and initial
draws: the differences vary less than either arm's values.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from scipy import stats

from service.api.schemas import Arm, Estimate, Reevaluation
from service.formatting import interval, number, weights

LEVEL = 0.95

OBJECTIVE_WORDS = {
    "auc": "held-out reward averaged over training",
    "final": "final held-out reward",
    "steps_to_target": "PPO steps to the target reward",
}


def estimate(values: Sequence[float | None]) -> Estimate:
    """Mean, standard error and the t interval of `values` (the interval only for 2 or
    more finite values)."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    if len(finite) != len(values) or not finite:
        return Estimate(values=list(values), mean=None, stderr=None)
    mean = statistics.fmean(finite)
    if len(finite) < 2:
        return Estimate(values=list(values), mean=mean, stderr=None)
    se = statistics.stdev(finite) / math.sqrt(len(finite))
    half = float(stats.t.ppf((1 + LEVEL) / 2, len(finite) - 1)) * se
    return Estimate(values=list(values), mean=mean, stderr=se, low=mean - half, high=mean + half)


def gain(best: Arm, sparse: Arm) -> Estimate | None:
    """The incumbent minus pure sparse over the study's own seeds, paired by seed; None when
    they are the same trial or their seeds do not pair. Optimistic: the same seeds picked
    the incumbent (the re-evaluation on fresh seeds is not)."""
    if best.trial == sparse.trial or len(best.seed_values) != len(sparse.seed_values):
        return None
    pairs = zip(best.seed_values, sparse.seed_values, strict=True)
    return estimate([None if a is None or b is None else a - b for a, b in pairs])


def sentence(found: Reevaluation, direction: str) -> str:
    """What the re-evaluation says, in one sentence: the best shape beats pure sparse, pure
    sparse beats it, or neither beyond noise (the 95 % interval of the paired difference
    holds zero)."""
    words = OBJECTIVE_WORDS.get(found.objective, found.objective)
    best, n = found.arms[0], len(found.seeds)
    d = found.difference
    if d is None:
        return (
            f"pure sparse is the study's best arm: no shape beat it ({words} "
            f"{number(best.mean)} ± {number(best.stderr)} over {n} fresh seeds)"
        )
    shape = f"the best shape ({weights(best.weights)})"
    if d.mean is None or d.low is None or d.high is None:
        return f"{shape} minus pure sparse: {number(d.mean, signed=True)}, too few seeds to say"
    ci = f"95 % CI {interval(d.low, d.high)}"
    better = d.low > 0 if direction == "maximize" else d.high < 0
    worse = d.high < 0 if direction == "maximize" else d.low > 0
    by = f"{number(abs(d.mean))} {words}, {ci} of the difference, over {n} fresh seeds"
    if better:
        return f"{shape} beats pure sparse by {by}"
    if worse:
        return f"pure sparse beats {shape} by {by}"
    return (
        f"no shape beat pure sparse beyond noise: {shape} minus pure sparse is "
        f"{number(d.mean, signed=True)} {words}, {ci}, over {n} fresh seeds"
    )
