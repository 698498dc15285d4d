"""Credit-assignment methods, one per file, registered by name."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shaping.attribution.amortized import AmortizedAttributor
from shaping.attribution.attention import AttentionAttributor
from shaping.attribution.base import Attributor
from shaping.attribution.lime_explainer import LimeAttributor
from shaping.attribution.options import MethodOptionError
from shaping.attribution.red import RedAttributor
from shaping.attribution.shap_explainer import ShapAttributor
from shaping.attribution.shapley import ShapleyAttributor
from shaping.attribution.sparse import SparseAttributor
from shaping.attribution.uniform import UniformAttributor
from shaping.scorer import RewardScorer

ATTRIBUTORS: dict[str, type[Attributor]] = {
    cls.name: cls
    for cls in (
        SparseAttributor,
        UniformAttributor,
        RedAttributor,
        AttentionAttributor,
        ShapleyAttributor,
        ShapAttributor,
        LimeAttributor,
        AmortizedAttributor,
    )
}

__all__ = [
    "ATTRIBUTORS",
    "Attributor",
    "MethodOptionError",
    "build_attributor",
    "check_method_options",
    "make_attributor",
]


def check_method_options(name: str, options: Mapping[str, Any]) -> None:
    """Refuse an unknown method, or options its constructor would refuse (unknown names,
    invalid values; `MethodOptionError` names every one), without building it: config
    admission runs this before any reward model is loaded."""
    if name not in ATTRIBUTORS:
        raise ValueError(
            f"unknown attribution method {name!r}; choose one of {sorted(ATTRIBUTORS)}"
        )
    ATTRIBUTORS[name].check_options(**{str(k): v for k, v in options.items()})


def make_attributor(name: str, scorer: RewardScorer, **options: Any) -> Attributor:
    """Method `name` with these options (an `amortized` one's teacher with its defaults)."""
    return build_attributor(name, scorer, {name: options})


def build_attributor(
    name: str, scorer: RewardScorer, options: Mapping[str, Mapping[str, Any]]
) -> Attributor:
    """Method `name` with its options from `options` (by method, as a run configures them).

    `amortized` gets its teacher built with the teacher method's own options (the ones a
    user gives as `shapley.permutations=16`, say), seeded from amortized's seed unless they
    name one.
    """
    own = {str(k): v for k, v in options.get(name, {}).items()}
    # Checked first: an unknown option is then a named error, not the constructor's TypeError.
    check_method_options(name, own)
    attributor = ATTRIBUTORS[name](scorer, **own)
    if isinstance(attributor, AmortizedAttributor) and (
        taught := options.get(attributor.teacher.name)
    ):
        teacher = attributor.teacher.name
        seeded = {"seed": attributor.teacher_seed, **taught}
        attributor.teacher = build_attributor(teacher, scorer, {teacher: seeded})
    return attributor
