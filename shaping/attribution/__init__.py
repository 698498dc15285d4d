"""Credit-assignment methods, one per file, registered by name."""

from __future__ import annotations

from typing import Any

from shaping.attribution.attention import AttentionAttributor
from shaping.attribution.base import Attributor
from shaping.attribution.lime_explainer import LimeAttributor
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
    )
}

__all__ = ["ATTRIBUTORS", "Attributor", "make_attributor"]


def make_attributor(name: str, scorer: RewardScorer, **options: Any) -> Attributor:
    if name not in ATTRIBUTORS:
        raise ValueError(
            f"unknown attribution method {name!r}; choose one of {sorted(ATTRIBUTORS)}"
        )
    try:
        return ATTRIBUTORS[name](scorer, **options)
    except TypeError as e:  # an option the method does not take
        raise ValueError(f"method {name!r}: {e}") from e
