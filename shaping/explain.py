"""Per-token credits of one response under every method, with what each cost."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from shaping.attribution import ATTRIBUTORS, make_attributor
from shaping.batch import RolloutBatch
from shaping.reward_model import RewardModel
from shaping.scorer import RewardScorer
from shaping.shape import conservation_residual


@dataclass(frozen=True)
class Explanation:
    method: str
    credits: list[float]
    """One per response token, in the policy's tokens."""
    rows: int
    """Reward-model rows this method evaluated."""
    seconds: float
    offset: float
    """R - sum(credits): the prompt-only term the method leaves out."""


def explain(
    rm: RewardModel,
    prompt: Sequence[int],
    response: Sequence[int],
    methods: Sequence[str] | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    policy_tokenizer: Any = None,
) -> tuple[float, list[Explanation]]:
    """The RM's score R of `prompt + response` and each method's credits (each method gets
    a scorer of its own, so its row count is its own)."""
    options = options or {}
    score = RewardScorer(rm, policy_tokenizer=policy_tokenizer).score_responses(
        [prompt], [response]
    )
    pad = rm.tokenizer.pad_token_id if rm.tokenizer.pad_token_id is not None else 0
    batch = RolloutBatch.from_lists([list(prompt)], [list(response)], score.tolist(), pad)
    out = []
    for name in methods or list(ATTRIBUTORS):
        scorer = RewardScorer(rm, policy_tokenizer=policy_tokenizer)
        attributor = make_attributor(name, scorer, **options.get(name, {}))
        credits = attributor.attribute(batch)
        out.append(
            Explanation(
                name,
                credits[0].tolist(),
                scorer.stats.rows,
                attributor.seconds,
                float(conservation_residual(credits, batch.scores)[0]),
            )
        )
    return float(score[0]), out
