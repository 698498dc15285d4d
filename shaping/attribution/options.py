"""What each attribution method's options may be: one declaration per option, checked by the
constructor and, before any reward model exists, by `check_method_options` (config admission).

Values arrive from YAML, JSON and the command line, so the checks are strict: a bool is not
an integer (`permutations: true` is a typo, not 1), a float is not an integer, and NaN or inf
is no number.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol


class MethodOptionError(ValueError):
    """Options a method cannot run with. `problems` maps each bad `method.option` to a
    sentence naming it, its value and what would be valid; the message joins them."""

    def __init__(self, problems: Mapping[str, str]) -> None:
        self.problems = dict(problems)
        super().__init__("; ".join(self.problems.values()))


class Option(Protocol):
    def accepts(self, value: Any) -> bool: ...

    @property
    def valid(self) -> str:
        """The valid values, in words (to follow "give ..." in an error)."""
        ...


Options = Mapping[str, Option]
"""A method's options by name (`Attributor.options`)."""


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class Choice:
    choices: tuple[str, ...]

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str) and value in self.choices

    @property
    def valid(self) -> str:
        return "one of " + ", ".join(map(repr, self.choices))


@dataclass(frozen=True)
class Integer:
    low: int
    high: int | None = None
    even: bool = False
    why: str = ""
    """What the bounds come from, for the message."""

    def accepts(self, value: Any) -> bool:
        return (
            _integer(value)
            and value >= self.low
            and (self.high is None or value <= self.high)
            and not (self.even and value % 2)
        )

    @property
    def valid(self) -> str:
        kind = "an even integer" if self.even else "an integer"
        bounds = f">= {self.low}" if self.high is None else f"in {self.low}..{self.high}"
        return f"{kind} {bounds}" + (f" ({self.why})" if self.why else "")


@dataclass(frozen=True)
class Real:
    low: float
    high: float
    why: str = ""

    def accepts(self, value: Any) -> bool:
        number = _integer(value) or isinstance(value, float)
        return number and math.isfinite(value) and self.low <= value <= self.high

    @property
    def valid(self) -> str:
        return f"a finite number in [{self.low:g}, {self.high:g}]" + (
            f" ({self.why})" if self.why else ""
        )


@dataclass(frozen=True)
class Flag:
    def accepts(self, value: Any) -> bool:
        return isinstance(value, bool)

    @property
    def valid(self) -> str:
        return "true or false"


def option_problems(method: str, declared: Options, given: Mapping[str, Any]) -> dict[str, str]:
    """`method.option` -> what is wrong with it, for every unknown or invalid option given."""
    takes = ", ".join(sorted(declared)) or "none"
    problems = {}
    for key, value in given.items():
        option = declared.get(key)
        name = f"{method}.{key}"
        if option is None:
            problems[name] = f"{name} is not an option (the options of {method!r}: {takes})"
        elif not option.accepts(value):
            problems[name] = f"{name}={value!r} is invalid (give {option.valid})"
    return problems
