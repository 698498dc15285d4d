"""What the service shows a user is finite: the base of every response shape, and of the
values the tuning computes for them (`service.tuning.study.verdict.Estimate`)."""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator


def _finite(value: Any) -> Any:
    """NaN and infinities as null: JSON has no such numbers (a single seed has no s.e.)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


class Public(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    @model_validator(mode="before")
    @classmethod
    def _no_nan(cls, data: Any) -> Any:
        return _finite(data) if isinstance(data, dict) else data
