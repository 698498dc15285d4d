"""Per-token credits of a trial's sample responses under each of its methods and under its
shaped mix: what the trial endpoint returns and the dashboard's heatmap shows.

The worker computes them at the end of a trial's first inner run, where the task and its
reward model are at hand, and the trial keeps them; the API and the dashboard only read.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shaping.explain import Explanation, explain
from trainers.checkpoint import load
from trainers.config import TrainConfig
from trainers.models import DeviceRewardModel, resolve_device

if TYPE_CHECKING:
    from trainers.tasks import Task

log = logging.getLogger(__name__)


def credit_samples(
    task: Task, config: TrainConfig, samples: Sequence[str]
) -> tuple[list[dict[str, Any]], str]:
    """(credits of each sample, ""), or ([], why not). Sample i is the decoded text of
    held-out prompt i and its response, as evaluation records them.

    Each entry: prompt, response, tokens (the response in the policy's tokens), score (the
    RM's R of prompt + response), methods ([{method, weight, credits, rm_rows, seconds,
    offset}], one per method of the trial, weight 0 included) and shaped (sum_k w_k phi_k,
    the per-token reward the trial trained with, before the KL penalty).
    """
    if not samples:
        return [], "the inner run recorded no sample responses"
    weights = dict(config.shaping.weights)
    options = config.method_options()  # seeded methods draw as the run's did
    # A method that learned during the run (amortized) credits as it ended it.
    saved = load(Path(config.run_dir)) if config.run_dir else None
    states = saved.get("attributors", {}) if saved else {}
    out = []
    try:
        # Where the run scored: a reward model too large for the CPU stays off it.
        rm = DeviceRewardModel(task.load_reward_model(), resolve_device(config.device))
        prompts = task.prompts("eval")
        for prompt_ids, sample in zip(prompts, samples, strict=False):
            prompt, response = _split(task, prompt_ids, sample)
            response_ids = task.tokenizer(response, add_special_tokens=False)["input_ids"]
            if not response_ids:
                continue  # an empty response has no tokens to credit
            score, rows = explain(
                rm,
                prompt_ids,
                response_ids,
                methods=list(weights),
                options=options,
                policy_tokenizer=task.tokenizer,
                states=states,
            )
            out.append(
                {
                    "prompt": prompt,
                    "response": response,
                    "tokens": [str(task.tokenizer.decode([t])) for t in response_ids],
                    "score": score,
                    "methods": [_method(r, weights) for r in rows],
                    "shaped": _shaped(rows, weights),
                }
            )
    except Exception as e:  # the trial's outcome stands; only its heatmap is missing
        log.warning("credits of the sample responses failed", exc_info=True)
        return [], f"computing the credits failed: {type(e).__name__}: {e}"
    return out, "" if out else "every sample response was empty"


def _split(task: Task, prompt_ids: list[int], sample: str) -> tuple[str, str]:
    prompt = str(task.tokenizer.decode(prompt_ids, skip_special_tokens=True))
    if not sample.startswith(prompt):
        raise ValueError(f"the sample {sample[:60]!r} does not start with its prompt")
    return prompt, sample[len(prompt) :]


def _method(row: Explanation, weights: dict[str, float]) -> dict[str, Any]:
    return {
        "method": row.method,
        "weight": weights[row.method],
        "credits": row.credits,
        "rm_rows": row.rows,
        "seconds": row.seconds,
        "offset": row.offset,
    }


def _shaped(rows: list[Explanation], weights: dict[str, float]) -> list[float]:
    T = len(rows[0].credits)
    return [sum(weights[r.method] * r.credits[t] for r in rows) for t in range(T)]
