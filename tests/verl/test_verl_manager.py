"""The exported shape inside the real verl (0.9.1, its own environment: `make test-verl`).

Batches are verl's `DataProto`s of responses the built-in task's policy sampled. The export is
loaded the way verl loads a reward manager (its `RewardLoopWorker` over verl's own PPO config
with the export's snippet merged in; the legacy manager by `load_extern_object`), and its
rewards must equal shapetune's own shaper's on the same batch, to 1e-6, and go through
verl's GAE. Estimators that sum a response's rewards first must see no shape: the export
refuses them, and this checks why on verl's own functions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import verl
from omegaconf import OmegaConf
from verl import DataProto
from verl.experimental.reward_loop.reward_loop import RewardLoopWorker
from verl.trainer.config import AlgoConfig
from verl.trainer.ppo import core_algos
from verl.utils.import_utils import load_extern_object

from service.export import MODULE, export_verl
from shaping.batch import RolloutBatch
from shaping.scorer import RewardScorer
from trainers.config import ShapingConfig
from trainers.models import build_shaper
from trainers.portable_shape import TOKEN_REWARD_ESTIMATORS, PortableShape, ShapeOrigin
from trainers.tasks import make_task
from trainers.tasks.base import Task
from trainers.tasks.imdb.prepare import Prepared
from trainers.verl_manager import VerlConfigError

DETERMINISTIC = {"sparse": 0.2, "red": 0.3, "attention": 0.2, "uniform": 0.3}
"""Methods that draw nothing: the Reward Loop shapes responses one by one, in any order."""
SAMPLED = {"sparse": 0.2, "red": 0.3, "shapley": 0.3, "shap": 0.2}
"""With seeded sampling: one batch, shaped once, gives the same draws as the study's shaper."""
OPTIONS = {
    "shapley": {"seed": 3, "permutations": 4, "max_exact_players": 1},  # sampled, not exact
    "shap": {"seed": 3, "max_evals": 64},
}


@pytest.fixture(scope="module")
def task(tiny_home: Path, tiny_prepared: Prepared) -> Task:
    return make_task("imdb-sentiment", tiny_home, size="tiny")


@pytest.fixture(scope="module")
def batch(task: Task) -> DataProto:
    """Six responses of ragged lengths sampled from the tiny policy, padded as verl pads
    them: prompts on the left, responses on the right, wider than any row."""
    policy = task.load_policy()
    prompts = task.prompts("eval")[:6]
    torch.manual_seed(0)
    responses = []
    for k, p in enumerate(prompts):
        out = policy.generate(
            torch.tensor([p]), do_sample=True, max_new_tokens=14, pad_token_id=0, eos_token_id=None
        )
        responses.append(out[0, len(p) :].tolist()[: 5 + k])
    P, T = max(map(len, prompts)) + 3, 16
    prompt_ids, response_ids = (
        torch.zeros(6, P, dtype=torch.long),
        torch.zeros(6, T, dtype=torch.long),
    )
    mask = torch.zeros(6, P + T, dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        prompt_ids[i, P - len(p) :], mask[i, P - len(p) : P] = torch.tensor(p), 1
        response_ids[i, : len(r)], mask[i, P : P + len(r)] = torch.tensor(r), 1
    return DataProto.from_dict(
        tensors={
            "prompts": prompt_ids,
            "responses": response_ids,
            "attention_mask": mask,
            "input_ids": torch.cat([prompt_ids, response_ids], 1),
        },
        non_tensors={"data_source": np.array(["imdb"] * 6, dtype=object)},
    )


def _export(task: Task, weights: dict[str, float], out: Path) -> Path:
    files = task.reward_model_files()
    assert files is not None
    shaping = ShapingConfig(
        weights=weights, options={k: OPTIONS[k] for k in weights if k in OPTIONS}
    )
    export_verl(PortableShape(shaping, files, ShapeOrigin("s", 1, task.name, "auc")), out)
    return out


def _shapers_rewards(task: Task, weights: dict[str, float], data: DataProto) -> torch.Tensor:
    """What shapetune's own inner run gives the batch: its scorer, its shaper, its batch
    (built as the inner run builds them: masked variants in bf16 where the CPU has it)."""
    options = {k: OPTIONS[k] for k in weights if k in OPTIONS}
    shaping = ShapingConfig(weights, options)
    rm = task.load_reward_model()
    shaper = build_shaper(rm, shaping, options, task.tokenizer, torch.device("cpu"))
    scorer = shaper.scorer
    prompts, responses = _lists(data)
    scores = scorer.score_responses(prompts, responses)
    shaped = shaper(RolloutBatch.from_lists(prompts, responses, scores.tolist(), 0))
    out = torch.zeros(data.batch["responses"].shape)
    out[:, : shaped.shape[1]] = shaped
    return out


def _verl_config(out: Path, task: Task, **changes: Any) -> Any:
    """verl's own PPO config with the export's snippet merged in (then `changes`)."""
    root = Path(verl.__file__).parent / "trainer" / "config"
    config = OmegaConf.merge(
        OmegaConf.load(root / "_generated_ppo_trainer.yaml"),
        OmegaConf.load(out / "verl_config.yaml"),
    )
    config.actor_rollout_ref.model.path = str(task.root / "policy")  # type: ignore[attr-defined]
    for key, value in changes.items():
        OmegaConf.update(config, key, value)
    return config


def _gae(rewards: torch.Tensor, data: DataProto) -> torch.Tensor:
    mask = data.batch["attention_mask"][:, data.batch["prompts"].shape[1] :].float()
    values = torch.linspace(-0.1, 0.1, rewards.shape[1]).expand_as(rewards) * mask
    advantages, _ = core_algos.compute_gae_advantage_return(
        rewards, values, mask, gamma=torch.tensor(1.0), lam=torch.tensor(0.95)
    )
    assert advantages.shape == rewards.shape and torch.isfinite(advantages).all()
    return advantages


def test_the_reward_loop_gives_the_shapers_rewards_to_verls_gae(
    task: Task, batch: DataProto, tmp_path: Path
) -> None:
    out = _export(task, DETERMINISTIC, tmp_path / "export")
    worker = RewardLoopWorker(_verl_config(out, task))  # loads the manager as verl does
    manager = type(worker.reward_manager)
    outputs = worker.loop.run_until_complete(worker.compute_score_batch(batch))
    # What RewardLoopManager.compute_rm_score does with the workers' outputs:
    rm_scores = manager.assemble_rm_scores(batch, [o["reward_score"] for o in outputs])
    expected = _shapers_rewards(task, DETERMINISTIC, batch)
    torch.testing.assert_close(rm_scores, expected, atol=1e-6, rtol=0)
    assert [o["reward_extra_info"]["shapetune_rm_score"] for o in outputs] == pytest.approx(
        [float(s) for s in _scores(task, batch)], abs=1e-6
    )
    sparse = _sparse(rm_scores, batch)
    assert not torch.allclose(_gae(rm_scores, batch), _gae(sparse, batch))  # the shape matters


def test_the_legacy_manager_gives_the_shapers_rewards_for_a_whole_batch(
    task: Task, batch: DataProto, tmp_path: Path
) -> None:
    out = _export(task, SAMPLED, tmp_path / "export")
    manager = load_extern_object(str(out / MODULE), "ShapedLegacyRewardManager")
    rewards = manager(tokenizer=task.tokenizer, num_examine=0)(batch, return_dict=True)
    expected = _shapers_rewards(task, SAMPLED, batch)
    torch.testing.assert_close(rewards["reward_tensor"], expected, atol=1e-6, rtol=0)
    assert len(rewards["reward_extra_info"]["shapetune_rm_score"]) == len(batch)
    _gae(rewards["reward_tensor"], batch)


def test_verl_configurations_that_would_lose_the_shape_are_refused(
    task: Task, tmp_path: Path
) -> None:
    out = _export(task, DETERMINISTIC, tmp_path / "export")
    for changes, message in [
        ({"algorithm.adv_estimator": "grpo"}, "sums each response's rewards"),
        ({"reward.reward_model.enable": False}, "one float per response"),
        ({"reward.reward_model.enable_resource_pool": True}, "one float per response"),
    ]:
        config = _verl_config(out, task, **changes)
        with pytest.raises(VerlConfigError, match=message):
            RewardLoopWorker(config)
    with pytest.raises(VerlConfigError, match=r"custom_reward_function\.path"):
        RewardLoopWorker(_verl_config(out, task, **{"reward.custom_reward_function.path": None}))


@pytest.mark.parametrize(
    "estimator",
    ["gae", "reinforce_plus_plus", "remax", "grpo", "rloo", "opo", "reinforce_plus_plus_baseline"],
)
def test_which_estimators_read_the_shape(estimator: str, task: Task, batch: DataProto) -> None:
    """The export's list of estimators that read per-token rewards, checked on verl's own:
    a shape and the sparse reward of the same sum give different advantages exactly there."""
    expected = _shapers_rewards(task, DETERMINISTIC, batch)
    sparse = _sparse(expected, batch)
    mask = batch.batch["attention_mask"][:, batch.batch["prompts"].shape[1] :].float()
    index = np.array([0, 0, 0, 1, 1, 1])  # two groups of three responses

    def advantages(rewards: torch.Tensor) -> torch.Tensor:
        if estimator == "gae":
            return _gae(rewards, batch)
        fn = core_algos.get_adv_estimator_fn(estimator)
        kwargs: dict[str, Any] = {"token_level_rewards": rewards, "response_mask": mask}
        if estimator == "remax":
            kwargs["reward_baselines"] = torch.zeros(len(rewards))
        elif estimator == "reinforce_plus_plus":
            kwargs["config"] = AlgoConfig(gamma=1.0)
        else:
            kwargs["index"] = index
        return fn(**kwargs)[0]

    differs = not torch.allclose(advantages(expected), advantages(sparse), atol=1e-6)
    assert differs == (estimator in TOKEN_REWARD_ESTIMATORS)


def _lists(data: DataProto) -> tuple[list[list[int]], list[list[int]]]:
    """The batch's prompts and responses as token lists, padding dropped."""
    width, mask = data.batch["prompts"].shape[1], data.batch["attention_mask"].bool()
    prompts = [r[m].tolist() for r, m in zip(data.batch["prompts"], mask[:, :width], strict=True)]
    responses = [
        r[m].tolist() for r, m in zip(data.batch["responses"], mask[:, width:], strict=True)
    ]
    return prompts, responses


def _scores(task: Task, data: DataProto) -> torch.Tensor:
    scorer = RewardScorer(task.load_reward_model(), policy_tokenizer=task.tokenizer)
    return scorer.score_responses(*_lists(data))


def _sparse(rewards: torch.Tensor, data: DataProto) -> torch.Tensor:
    """The same sums on each response's last token."""
    lengths = data.batch["attention_mask"][:, data.batch["prompts"].shape[1] :].sum(1)
    sparse = torch.zeros_like(rewards)
    sparse[torch.arange(len(rewards)), lengths - 1] = rewards.sum(1)
    return sparse
