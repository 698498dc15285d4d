"""Per-token credits of one response under every method, with what each cost."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from shaping.attribution import ATTRIBUTORS, build_attributor
from shaping.attribution.base import Attributor
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
    states: Mapping[str, Mapping[str, Any]] | None = None,
) -> tuple[float, list[Explanation]]:
    """The RM's score R of `prompt + response` and each method's credits (each method gets
    a scorer of its own, so its row count is its own).

    `states`: methods' state as a run's checkpoint keeps it (`Attributor.state`, by
    method); a method that learns (`amortized`) then credits as trained, learning no more.
    """
    options, states = options or {}, states or {}
    score = RewardScorer(rm, policy_tokenizer=policy_tokenizer).score_responses(
        [prompt], [response]
    )
    pad = rm.tokenizer.pad_token_id if rm.tokenizer.pad_token_id is not None else 0
    batch = RolloutBatch.from_lists([list(prompt)], [list(response)], score.tolist(), pad)
    untrained = [
        m for m in methods or [] if ATTRIBUTORS.get(m, Attributor).learns and m not in states
    ]
    if untrained:
        raise ValueError(
            f"method {untrained[0]!r} credits with a network trained during a PPO run: give "
            "the run's checkpoint (`explain --checkpoint RUN_DIR`), or explain its teacher"
        )
    out = []
    for name in methods or [m for m, a in ATTRIBUTORS.items() if not a.learns or m in states]:
        scorer = RewardScorer(rm, policy_tokenizer=policy_tokenizer)
        attributor = build_attributor(name, scorer, options)
        if name in states:
            attributor.load_state(states[name])
            attributor.freeze()
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
