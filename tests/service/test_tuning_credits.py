"""Credits of a trial's sample responses, as the worker records them at the end of a run."""

from __future__ import annotations

import pytest
import torch

from service.tuning.study.credits import credit_samples
from trainers.config import ShapingConfig, TaskConfig, TrainConfig
from trainers.tasks import make_task
from trainers.tasks.synthetic import SyntheticTask

RESPONSES = [[7, 9, 11, 13, 9], [20, 5, 6]]


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> SyntheticTask:
    task = make_task("synthetic", tmp_path_factory.mktemp("home"))
    assert isinstance(task, SyntheticTask)
    return task


def _config(weights: dict[str, float]) -> TrainConfig:
    return TrainConfig(task=TaskConfig("synthetic"), shaping=ShapingConfig(weights), seed=3)


def _samples(task: SyntheticTask) -> list[str]:
    """Texts as evaluation records them: held-out prompt i and its response, decoded."""
    prompts = task.prompts("eval")
    return [
        str(task.tokenizer.decode(p + r, skip_special_tokens=True))
        for p, r in zip(prompts, RESPONSES, strict=False)
    ]


def test_every_method_and_the_mix_are_credited_per_token(task: SyntheticTask) -> None:
    weights = {"sparse": 0.25, "shapley": 0.75, "uniform": 0.0}
    credited, note = credit_samples(task, _config(weights), _samples(task))
    assert note == "" and len(credited) == 2
    rm = task.load_reward_model()
    for prompt, response, sample in zip(task.prompts("eval"), RESPONSES, credited, strict=False):
        assert len(sample["tokens"]) == len(response)
        assert [m["method"] for m in sample["methods"]] == list(weights)
        by_method = {m["method"]: m for m in sample["methods"]}
        assert {k: m["weight"] for k, m in by_method.items()} == weights
        # The synthetic game has pairwise terms only, so sampled Shapley values are exact.
        exact = rm.exact_shapley(prompt, response)
        torch.testing.assert_close(torch.tensor(by_method["shapley"]["credits"]), exact)
        assert by_method["shapley"]["rm_rows"] > 1
        for m in sample["methods"]:  # every method conserves the score R
            assert sum(m["credits"]) + m["offset"] == pytest.approx(sample["score"], abs=1e-5)
        mixed = [
            0.25 * s + 0.75 * v
            for s, v in zip(
                by_method["sparse"]["credits"], by_method["shapley"]["credits"], strict=True
            )
        ]
        assert sample["shaped"] == pytest.approx(mixed)


def test_a_sample_that_does_not_match_its_prompt_leaves_a_note_not_an_error(
    task: SyntheticTask,
) -> None:
    credited, note = credit_samples(task, _config({"sparse": 1.0}), ["words of another task"])
    assert credited == []
    assert "computing the credits failed" in note and "does not start with its prompt" in note


def test_a_run_without_samples_says_so(task: SyntheticTask) -> None:
    assert credit_samples(task, _config({"sparse": 1.0}), []) == (
        [],
        "the inner run recorded no sample responses",
    )
