"""verl reward managers that give every response token its shaped reward.

Two of verl's interfaces (0.9.1), over one `ShapedRewards` per process:

* the Reward Loop (`RewardManagerBase`): `run_single` shapes one response and returns its
  per-token rewards as its `reward_score`; `assemble_rm_scores` lays them into the
  `[batch, response_len]` `rm_scores` tensor that becomes `token_level_scores`. verl calls
  `assemble_rm_scores` on its batch reward path (`RewardLoopManager.compute_rm_score`), the
  one its PPO trainer takes when `reward.reward_model.enable` is true and the reward model
  shares the actor's pool. Rewards streamed from the agent loop instead carry one float per
  response, put on the last token: `init_class` refuses that configuration rather than let
  the shape fall back to sparse without a word.
* the legacy batch manager (`AbstractRewardManager`): `__call__(data)` returns the
  `[batch, response_len]` tensor, for trainers and recipes that call a reward function on
  the whole batch.

`shapetune export --to verl` writes a module that subclasses both with its `shape.json`.
This module imports verl: it runs where verl is installed (`pip install 'shapetune[verl]'`).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, ClassVar

import torch
from verl import DataProto
from verl.experimental.reward_loop.reward_manager.base import RewardManagerBase
from verl.workers.reward_manager.abstract import AbstractRewardManager

from trainers.portable_shape import EstimatorError, Shaped, ShapedRewards, check_estimator


class VerlConfigError(ValueError):
    """A verl configuration under which the shape would not reach the advantages."""


def check_reward_loop(config: Any) -> None:
    """What verl's PPO trainer needs to hand the Reward Loop's per-token rewards to the
    advantages: its batch reward path, which calls `run_single` and `assemble_rm_scores`."""
    try:
        check_estimator(str(config.algorithm.adv_estimator))
    except EstimatorError as e:
        raise VerlConfigError(f"algorithm.{e}") from None
    reward = config.reward
    if not reward.reward_model.enable or reward.reward_model.enable_resource_pool:
        raise VerlConfigError(
            "verl streams rewards from the agent loop as one float per response when "
            "reward.reward_model.enable is false or enable_resource_pool is true, and the "
            "per-token shape would be lost; set reward.reward_model.enable=true and "
            "enable_resource_pool=false (the export's config does)"
        )
    if reward.custom_reward_function.path is None:
        raise VerlConfigError(
            "with a reward model enabled, verl calls this manager only when "
            "reward.custom_reward_function.path is set; the export's config sets it"
        )


def _split(data: DataProto) -> tuple[torch.Tensor, ...]:
    """verl's padded batch as (prompt ids, prompt mask, response ids, response mask)."""
    prompts, responses = data.batch["prompts"], data.batch["responses"]
    mask = data.batch["attention_mask"]
    width = prompts.shape[1]
    return prompts, mask[:, :width], responses, mask[:, width:]


class ShapetuneRewardLoopManager(RewardManagerBase):
    """verl's Reward Loop manager for one shape file (`shape_file`, set by the export)."""

    shape_file: ClassVar[Path]
    _rewards: ClassVar[ShapedRewards | None] = None
    _lock: ClassVar[threading.Lock] = threading.Lock()
    """The loop shapes responses in executor threads; one shaper, one at a time."""

    def __init__(
        self, config: Any, tokenizer: Any, compute_score: Any = None, **_: Any
    ) -> None:  # verl also passes reward_router_address, reward_model_tokenizer: unused
        super().__init__(config, tokenizer, compute_score)

    @classmethod
    def init_class(cls, config: Any, tokenizer: Any) -> None:
        if cls._class_initialized:
            return
        check_reward_loop(config)
        cls._rewards = ShapedRewards.load(cls.shape_file, tokenizer, "auto")
        cls._class_initialized = True

    async def run_single(self, data: DataProto) -> dict[str, Any]:
        item = data[-1:]  # a multi-sequence output is scored on its last sequence, as verl does
        shaped = await self.loop.run_in_executor(None, self._shape, item)
        length = int(item.batch["attention_mask"][0, item.batch["prompts"].shape[1] :].sum())
        return {
            "reward_score": shaped.rewards[0, :length].tolist(),
            "reward_extra_info": {"shapetune_rm_score": float(shaped.scores[0])},
        }

    @classmethod
    def _shape(cls, data: DataProto) -> Shaped:
        assert cls._rewards is not None, "init_class loads the shape"
        with cls._lock:
            return cls._rewards(*_split(data))

    @classmethod
    def assemble_rm_scores(cls, data: DataProto, scores: list[Any]) -> torch.Tensor:
        """Each response's per-token rewards (what `run_single` returned), right-padded."""
        rm_scores = torch.zeros_like(data.batch["responses"], dtype=torch.float32)
        for i, rewards in enumerate(scores):
            if not isinstance(rewards, list):
                raise VerlConfigError(
                    f"response {i} came with one reward ({rewards!r}), not one per token: verl "
                    "took another reward path; see the export's README for the configuration"
                )
            rm_scores[i, : len(rewards)] = torch.tensor(rewards, dtype=torch.float32)
        return rm_scores


class ShapetuneLegacyRewardManager(AbstractRewardManager):
    """verl's batch reward manager (`__call__(data) -> [batch, response_len]`) for one shape
    file. Its trainer's advantage estimator must read per-token rewards (`check_estimator`)."""

    shape_file: ClassVar[Path]
    _rewards: ClassVar[ShapedRewards | None] = None

    def __init__(
        self,
        tokenizer: Any,
        num_examine: int = 0,
        compute_score: Any = None,
        reward_fn_key: str = "data_source",
        **_: Any,
    ) -> None:
        cls = type(self)
        if cls._rewards is None:
            cls._rewards = ShapedRewards.load(cls.shape_file, tokenizer, "auto")
        self.rewards = cls._rewards

    def __call__(self, data: DataProto, return_dict: bool = False) -> Any:
        shaped = self.rewards(*_split(data))
        if not return_dict:
            return shaped.rewards
        return {
            "reward_tensor": shaped.rewards,
            "reward_extra_info": {"shapetune_rm_score": shaped.scores.tolist()},
        }
