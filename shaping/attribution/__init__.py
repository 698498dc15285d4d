"""Credit-assignment methods, one per file, registered by name."""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeGuard

from shaping.attribution.options import MethodOptionError

if TYPE_CHECKING:  # a method's module imports torch: only a method asked for is imported
    from shaping.attribution.amortized import AmortizedAttributor
    from shaping.attribution.base import Attributor
    from shaping.scorer import RewardScorer

METHODS: dict[str, str] = {
    "sparse": "sparse:SparseAttributor",
    "uniform": "uniform:UniformAttributor",
    "red": "red:RedAttributor",
    "attention": "attention:AttentionAttributor",
    "shapley": "shapley:ShapleyAttributor",
    "shap": "shap_explainer:ShapAttributor",
    "lime": "lime_explainer:LimeAttributor",
    "amortized": "amortized:AmortizedAttributor",
}
"""Each method's class, as module:class in this package, in the order they are listed."""


class _Registry(Mapping[str, "type[Attributor]"]):
    """The methods by name; a method's module is imported when its class is first asked
    for, so that naming, listing and counting methods (a spec's admission, `shapetune
    status`) import no torch."""

    def __getitem__(self, name: str) -> type[Attributor]:
        module, _, cls = METHODS[name].partition(":")
        found: type[Attributor] = getattr(importlib.import_module(f"{__name__}.{module}"), cls)
        return found

    def __iter__(self) -> Iterator[str]:
        return iter(METHODS)

    def __len__(self) -> int:
        return len(METHODS)

    def __contains__(self, name: object) -> bool:
        return name in METHODS


ATTRIBUTORS: Mapping[str, type[Attributor]] = _Registry()

__all__ = [
    "ATTRIBUTORS",
    "METHODS",
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
    if _is_amortized(attributor) and (taught := options.get(attributor.teacher.name)):
        teacher = attributor.teacher.name
        seeded = {"seed": attributor.teacher_seed, **taught}
        attributor.teacher = build_attributor(teacher, scorer, {teacher: seeded})
    return attributor


def _is_amortized(attributor: Attributor) -> TypeGuard[AmortizedAttributor]:
    return attributor.name == "amortized"
