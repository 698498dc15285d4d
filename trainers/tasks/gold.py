"""The gold judge: VADER, a lexicon-and-rules sentiment scorer nobody here trained.

PPO optimises the learned RM; VADER scores the same text independently, so a policy that
games the RM (repetition, RM blind spots) shows up as an RM gain without a gold gain.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import numpy as np
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer


@cache
def _analyzer() -> SentimentIntensityAnalyzer:
    return SentimentIntensityAnalyzer()


def vader_compound(texts: Sequence[str]) -> np.ndarray:
    """VADER's compound score in [-1, 1] for each text."""
    analyzer = _analyzer()
    return np.array([analyzer.polarity_scores(t)["compound"] for t in texts], dtype=np.float64)
