"""How a number and a set of shaping weights read, wherever a study is shown: the CLI's
tables, the dashboard's pages and its figures. One module, so that a study looks the same
everywhere; each place chooses only its mark for a missing value (the pages use "–")."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

MISSING = "-"


def number(value: object, digits: int = 4, *, signed: bool = False, missing: str = MISSING) -> str:
    """`value` to `digits` decimals (with its sign if `signed`); `missing` for None, NaN, an
    infinity or anything that is not a number."""
    if not isinstance(value, int | float) or not math.isfinite(value):
        return missing
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def estimate(mean: object, stderr: object, *, missing: str = MISSING) -> str:
    """`0.4105 ± 0.0387`: a mean over seeds and its standard error."""
    return f"{number(mean, missing=missing)} ± {number(stderr, missing=missing)}"


def interval(low: object, high: object, *, missing: str = MISSING) -> str:
    """`[-0.0123, +0.0456]`: a confidence interval, signed (it is mostly of a difference)."""
    return f"[{number(low, signed=True, missing=missing)}, {number(high, signed=True, missing=missing)}]"


def significant(value: object, digits: int = 6) -> float | None:
    """`value` rounded to `digits` significant digits, as a figure's JSON carries it (1,000
    trials' worth per page); None for a missing or non-finite number (JSON has no NaN)."""
    if not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(f"{value:.{digits}g}")


def weights(
    weights: Mapping[str, float] | None,
    digits: int = 2,
    *,
    sep: str = "=",
    missing: str = MISSING,
) -> str:
    """`sparse=0.26, red=0.74`: each method and its weight, in order, leaving out those that
    round to zero at `digits` decimals; `missing` if none is left."""
    shown = [
        f"{name}{sep}{w:.{digits}f}"
        for name, w in (weights or {}).items()
        if abs(w) >= 0.5 * 10**-digits
    ]
    return ", ".join(shown) or missing


def weight_row(
    weights: Mapping[str, float] | None, methods: Sequence[str], *, missing: str = MISSING
) -> str:
    """`0.26/0.22/0.53`: one weight per method of `methods`, for a column whose header names
    the methods (`"/".join(methods)`), so that a table of trials fits a narrow terminal."""
    if not weights:
        return missing
    return "/".join(f"{weights[m]:.2f}" for m in methods)


def paired_interval(difference: object, *, missing: str = MISSING) -> str:
    """`+0.0333 [-0.0123, +0.0790]`: a paired difference's mean and its interval (anything
    with `mean`, `low` and `high`, or a mapping of them: the dashboard's pages get the read
    model dumped to dicts); `missing` for none."""

    def field(name: str) -> Any:
        if isinstance(difference, Mapping):
            return difference.get(name)
        return getattr(difference, name, None)

    mean = field("mean")
    if mean is None:
        return missing
    low, high = field("low"), field("high")
    shown = number(mean, signed=True, missing=missing)
    return shown if low is None else f"{shown} {interval(low, high, missing=missing)}"
