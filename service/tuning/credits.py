"""Per-token credits of a trial's sample response under each method and under the trial's
shaped mix: what the dashboard's heatmap (and anyone reading a trial) shows.

Computed on demand with the study's own task reward model and cached per trial in this
process: a finished trial's sample never changes.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.tuning.report import trial_report
from service.tuning.spec import SpecError, parse_spec
from trainers.config import method_options

if TYPE_CHECKING:
    from shaping.explain import Explanation
    from trainers.tasks import Task

log = logging.getLogger(__name__)

CACHED_TRIALS = 256
SHAPED = "shaped mix"
"""The name of the row that mixes the methods' credits with the trial's weights."""


@dataclass(frozen=True)
class SampleCredits:
    """The first sample response of a trial, split into prompt and response, and its
    credits; or, when they cannot be computed, `error` says why."""

    prompt: str = ""
    response: str = ""
    tokens: list[str] = field(default_factory=list)
    """The response's tokens, as the policy's tokenizer splits them."""
    score: float = 0.0
    """The reward model's score R of prompt + response."""
    rows: list[Explanation] = field(default_factory=list)
    """One per method of the study, then the shaped mix (named SHAPED)."""
    weights: dict[str, float] = field(default_factory=dict)
    error: str = ""


_cache: OrderedDict[tuple[str, str, int], SampleCredits] = OrderedDict()
_lock = threading.Lock()  # one computation at a time: it is CPU-bound


def sample_credits(url: str, name: str, number: int, home: Path) -> SampleCredits:
    """Credits of trial `number`'s first sample response. Raises what `trial_report`
    raises for an unknown study or trial; every other problem comes back as `error`."""
    key = (url, name, number)
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
        trial = trial_report(url, name, number)
        result = _compute(trial, home)
        if not result.error and trial["state"] in ("COMPLETE", "PRUNED"):
            _cache[key] = result
            if len(_cache) > CACHED_TRIALS:
                _cache.popitem(last=False)
    return result


def _compute(trial: dict[str, Any], home: Path) -> SampleCredits:
    from shaping.explain import explain
    from trainers.tasks import TaskError

    if not trial["samples"]:
        return SampleCredits(
            error=f"trial {trial['number']} recorded no sample responses "
            f"(state {trial['state']}); they are saved when its inner runs finish"
        )
    try:
        spec = parse_spec(trial["spec"])
        weights = trial["weights"] or {}
        config = spec.train_config(weights, trial["knobs"], seed=spec.seed)
        task = _task(spec.task.name, str(home), json.dumps(spec.task.options, sort_keys=True))
        prompt_ids, prompt, response = _split(task, trial["samples"][0])
        response_ids = task.tokenizer(response, add_special_tokens=False)["input_ids"]
        if not response_ids:
            return SampleCredits(prompt, response, error="the sample response is empty")
        options = {k: dict(v) for k, v in config.shaping.options.items()}
        for method in spec.methods:  # seeded methods draw as the trial's first seed did
            if "seed" in method_options(method):
                options.setdefault(method, {}).setdefault("seed", spec.seed)
        score, rows = explain(
            task.load_reward_model(),
            prompt_ids,
            response_ids,
            methods=spec.methods,
            options=options,
            policy_tokenizer=task.tokenizer,
        )
    except (SpecError, TaskError, ValueError, OSError) as e:
        return SampleCredits(error=f"cannot compute credits: {e}")
    except Exception as e:  # a model that fails to load or run: the page says so
        log.warning("credits of trial %s failed", trial["number"], exc_info=True)
        return SampleCredits(error=f"cannot compute credits: {type(e).__name__}: {e}")
    tokens = [str(task.tokenizer.decode([t])) for t in response_ids]
    return SampleCredits(
        prompt, response, tokens, score, [*rows, _shaped(rows, weights)], dict(weights)
    )


@lru_cache(maxsize=2)
def _task(name: str, home: str, options: str) -> Task:
    from trainers.tasks import make_task

    return make_task(name, Path(home), **json.loads(options))


def _split(task: Task, sample: str) -> tuple[list[int], str, str]:
    """A sample is the decoded text of held-out prompt 0 and its response (evaluation
    samples follow the held-out prompts in order): recover both."""
    prompt_ids = task.prompts("eval")[0]
    prompt = str(task.tokenizer.decode(prompt_ids, skip_special_tokens=True))
    if not sample.startswith(prompt):
        raise ValueError(
            f"the sample {sample[:60]!r} does not start with the task's first held-out prompt "
            f"{prompt[:60]!r}; was the task changed since the study ran?"
        )
    return prompt_ids, prompt, sample[len(prompt) :]


def _shaped(rows: list[Explanation], weights: dict[str, float]) -> Explanation:
    """sum_k w_k * phi_k[t]: the per-token reward this trial trained with, before KL."""
    from shaping.explain import Explanation

    T = len(rows[0].credits)
    used = [r for r in rows if weights.get(r.method, 0.0) > 0]
    return Explanation(
        SHAPED,
        [sum(weights[r.method] * r.credits[t] for r in used) for t in range(T)],
        sum(r.rows for r in used),
        sum(r.seconds for r in used),
        sum(weights[r.method] * r.offset for r in used),
    )
