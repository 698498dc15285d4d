import itertools
import math
from pathlib import Path

import pytest
import torch

from trainers.tasks import TaskError, make_task
from trainers.tasks.synthetic import SyntheticTask


def _rows(rm, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), rm.tokenizer.pad_token_id)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1
    return ids, mask


def brute_force_shapley(rm, prompt: list[int], response: list[int]) -> torch.Tensor:
    """Shapley values by enumerating every coalition of response tokens through the RM."""
    T = len(response)
    coalitions = list(itertools.product([0, 1], repeat=T))
    rows = [
        prompt + [y if keep else rm.mask_token_id for y, keep in zip(response, c, strict=True)]
        for c in coalitions
    ]
    values = dict(zip(coalitions, rm.scores(*_rows(rm, rows)).tolist(), strict=True))
    phi = torch.zeros(T, dtype=torch.float64)
    for c, v in values.items():
        for t in range(T):
            if c[t]:
                continue
            with_t = (*c[:t], 1, *c[t + 1 :])
            s = sum(c)
            weight = math.factorial(s) * math.factorial(T - s - 1) / math.factorial(T)
            phi[t] += weight * (values[with_t] - v)
    return phi


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_shapley_matches_brute_force(seed: int) -> None:
    task = SyntheticTask(n_words=12, response_length=6, interaction=1.0, seed=seed)
    rm = task.load_reward_model()
    g = torch.Generator().manual_seed(seed)
    prompt = task.prompts("train")[0]
    response = torch.randint(3, len(task.tokenizer), (6,), generator=g).tolist()
    expected = brute_force_shapley(rm, prompt, response)
    torch.testing.assert_close(
        rm.exact_shapley(prompt, response).double(), expected, atol=1e-5, rtol=1e-5
    )


def test_efficiency_and_prefix_scores() -> None:
    task = SyntheticTask(seed=3)
    rm = task.load_reward_model()
    prompt, response = task.prompts("eval")[0], [5, 9, 4, 4, 17, 30, 3, 8]
    ids, mask = _rows(rm, [prompt + response, prompt + [rm.mask_token_id] * len(response)])
    v_full, v_empty = rm.scores(ids, mask).tolist()
    assert rm.exact_shapley(prompt, response).sum().item() == pytest.approx(
        v_full - v_empty, abs=1e-5
    )
    prefix = rm.prefix_scores(ids, mask)
    assert prefix[0, -1].item() == pytest.approx(v_full, abs=1e-5)
    short, short_mask = _rows(rm, [prompt + response[:3]])
    assert prefix[0, len(prompt) + 2].item() == pytest.approx(
        rm.scores(short, short_mask).item(), abs=1e-5
    )


def test_padding_and_masking_contribute_nothing() -> None:
    rm = SyntheticTask(seed=0).load_reward_model()
    ids, mask = _rows(rm, [[0, 5, 6], [0, 5, 6, 7]])
    scores = rm.scores(ids, mask)
    manual = rm.u[5] + rm.u[6] + rm.w[5, 6]
    assert scores[0].item() == pytest.approx(manual.item(), abs=1e-6)
    masked, masked_mask = _rows(rm, [[0, 5, rm.mask_token_id, 7]])
    assert rm.scores(masked, masked_mask).item() == pytest.approx(
        (rm.u[5] + rm.u[7]).item(), abs=1e-6
    )


def test_policy_generates_and_is_fresh_each_time(tmp_path: Path) -> None:
    task = make_task("synthetic", tmp_path, response_length=5, seed=1)
    a, b = task.load_policy(), task.load_policy()
    assert a is not b
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb)  # the same start for every inner run
    prompt = torch.tensor([task.prompts("train")[0]])
    out = a.generate(
        prompt,
        do_sample=True,
        max_new_tokens=5,
        min_new_tokens=5,
        pad_token_id=task.tokenizer.pad_token_id,
    )
    assert out.shape == (1, prompt.shape[1] + 5)


def test_prompts_are_seeded_and_disjoint_splits() -> None:
    one, two = SyntheticTask(seed=4), SyntheticTask(seed=4)
    assert one.prompts("train") == two.prompts("train")
    assert len(one.prompts("train")) == 512 and len(one.prompts("eval")) == 64
    assert SyntheticTask(seed=5).prompts("train") != one.prompts("train")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"n_words": 1}, "n_words=1"),
        ({"interaction": -1.0}, "interaction"),
        ({"response_length": 0}, "response_length=0"),
        ({"train_prompts": 0}, "train_prompts"),
    ],
)
def test_bad_options(tmp_path: Path, options: dict, message: str) -> None:
    with pytest.raises(TaskError, match=message):
        make_task("synthetic", tmp_path, **options)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"n_words": "abc"}, r"n_words='abc' should be an integer"),
        ({"train_prompts": 2.5}, r"train_prompts=2.5 should be an integer"),
        ({"seed": True}, r"seed=True should be an integer"),
        ({"interaction": float("nan")}, r"interaction=nan should be a finite number"),
        ({"n_words": "abc", "seed": None}, r"n_words='abc' .*; seed=None should be"),
    ],
)
def test_task_options_of_the_wrong_type_are_named(options: dict, message: str) -> None:
    from trainers.config import ConfigError, TaskConfig

    with pytest.raises(TaskError, match=message):
        make_task("synthetic", Path("."), **options)
    with pytest.raises(ConfigError, match=f"task.options: .*{message}"):
        TaskConfig("synthetic", options)


def test_a_response_longer_than_the_policy_takes_is_refused_before_loading() -> None:
    from trainers.config import ConfigError, PPOConfig, TaskConfig, TrainConfig
    from trainers.ppo import build_run, check_config

    task = make_task("synthetic", Path("."), response_length=8)
    assert task.max_response_length() == 8
    ok = TrainConfig(task=TaskConfig("synthetic"), ppo=PPOConfig(response_length=8))
    check_config(ok, task)
    too_long = TrainConfig(task=TaskConfig("synthetic"), ppo=PPOConfig(response_length=9))
    for check in (check_config, build_run):
        with pytest.raises(ConfigError, match=r"ppo.response_length=9 .*give at most 8"):
            check(too_long, task)
