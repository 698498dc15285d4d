"""A tuned shape that leaves shapetune: the file that names it, and the per-token rewards it
gives a batch that another trainer sampled.

`shapetune export` writes `shape.json`; a trainer outside shapetune (verl, through
`trainers.verl_manager`) loads it with `ShapedRewards.load` and calls it on its padded
tensors. The rewards are what the study's inner PPO run gave the same responses: the same
reward model, methods, options (seeds included) and weights, through the same `Shaper`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedTokenizerBase,
)

from shaping.attribution.amortized import AmortizedAttributor
from shaping.batch import RolloutBatch
from shaping.explainer import CreditNet, load_net
from shaping.reward_model import HFRewardModel
from trainers.config import ConfigError, ShapingConfig
from trainers.models import build_shaper, resolve_device
from trainers.tasks.base import RewardModelFiles

SHAPE_FORMAT = 1
EXPLAINER_FILE = "explainer.pt"
"""Beside shape.json when the shape weights `amortized`: the reward model's explainer."""
"""The version of `shape.json`; a reader refuses a file of another."""

TOKEN_REWARD_ESTIMATORS = frozenset(
    {"gae", "reinforce_plus_plus", "remax", "optimal_token_baseline", "tir_optimal_token_baseline"}
)
"""verl's advantage estimators (0.9.1) that read each token's reward: GAE, and those that
take returns-to-go. The others (grpo, rloo, opo, gpg, reinforce_plus_plus_baseline,
grpo_passk, ...) sum a response's rewards first, and a shape that keeps the sum, as every
shapetune method does, changes nothing there."""


def check_estimator(name: str) -> None:
    """Refuse a verl advantage estimator that the shape cannot change."""
    if name not in TOKEN_REWARD_ESTIMATORS:
        raise EstimatorError(
            f"adv_estimator {name!r} sums each response's rewards before it uses them, so a "
            "shape that keeps the sum changes nothing; use one that reads every token's "
            f"reward: {', '.join(sorted(TOKEN_REWARD_ESTIMATORS))} (gae is PPO's)"
        )


class EstimatorError(ValueError):
    """An advantage estimator under which a shape would change nothing."""


class ShapeFileError(ValueError):
    """A shape file that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class ShapeOrigin:
    """Where the shape was tuned: what a reader needs to trust it or find it again."""

    study: str
    trial: int
    task: str
    objective: str
    verdict: str = ""
    """The race's sentence on fresh seeds, when the study has one for this trial."""


@dataclass(frozen=True)
class PortableShape:
    shaping: ShapingConfig
    """Weights, each method's options (their seeds fixed), and how masked variants are
    scored: the shaper of the trial's inner runs."""
    reward_model: RewardModelFiles
    origin: ShapeOrigin

    def to_dict(self, relative_to: Path | None = None) -> dict[str, Any]:
        """Plain data for `shape.json`; RM folders under `relative_to` are written relative to
        it, so a copied export still finds a copied model."""

        def where(path: Path) -> str:
            if relative_to is not None and path.is_relative_to(relative_to):
                return str(path.relative_to(relative_to))
            return str(path)

        rm = self.reward_model
        return {
            "format": SHAPE_FORMAT,
            "shaping": asdict(self.shaping),
            "reward_model": {
                "model": where(rm.model),
                "tokenizer": where(rm.tokenizer),
                "mask_token_id": rm.mask_token_id,
            },
            "origin": asdict(self.origin),
        }

    def to_json(self, relative_to: Path | None = None) -> str:
        """`shape.json`'s text: to be saved in the folder `relative_to`."""
        return json.dumps(self.to_dict(relative_to), indent=2) + "\n"

    @classmethod
    def load(cls, path: Path) -> PortableShape:
        """Read and check `shape.json`; relative RM folders are taken from its own folder."""
        try:
            data = json.loads(Path(path).read_text())
        except OSError as e:
            raise ShapeFileError(f"shape file {str(path)!r} cannot be read: {e}") from e
        except json.JSONDecodeError as e:
            raise ShapeFileError(f"shape file {str(path)!r} is not JSON: {e}") from e
        try:
            return cls.from_dict(data, Path(path).parent)
        except (ShapeFileError, ConfigError) as e:
            raise ShapeFileError(f"shape file {str(path)!r}: {e}") from e

    @classmethod
    def from_dict(cls, data: Any, base: Path) -> PortableShape:
        _fields(data, "the file", {"format", "shaping", "reward_model", "origin"})
        if data["format"] != SHAPE_FORMAT:
            raise ShapeFileError(
                f"format {data['format']!r} is not {SHAPE_FORMAT}; export the shape again with "
                "this version of shapetune"
            )
        shaping = _fields(data["shaping"], "shaping", set(ShapingConfig.__dataclass_fields__))
        rm = _fields(data["reward_model"], "reward_model", {"model", "tokenizer", "mask_token_id"})
        origin = _fields(data["origin"], "origin", set(ShapeOrigin.__dataclass_fields__))
        mask = rm["mask_token_id"]
        if mask is not None and (not isinstance(mask, int) or isinstance(mask, bool)):
            raise ShapeFileError(f"reward_model.mask_token_id is {mask!r}: give a token id or null")
        return cls(
            shaping=ShapingConfig(**shaping),
            reward_model=RewardModelFiles(
                base / str(rm["model"]), base / str(rm["tokenizer"]), mask
            ),
            origin=ShapeOrigin(**origin),
        )


def _fields(data: Any, where: str, names: set[str]) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ShapeFileError(f"{where} must be a mapping, not {type(data).__name__}")
    missing, unknown = sorted(names - set(data)), sorted(set(data) - names)
    if missing or unknown:
        raise ShapeFileError(
            f"{where}: missing {missing}, unknown {unknown}; its fields are {sorted(names)}"
        )
    return dict(data)


def load_reward_model(files: RewardModelFiles) -> HFRewardModel:
    """The reward model a shape names, from its folders only (nothing is downloaded)."""
    for role, folder in (("model", files.model), ("tokenizer", files.tokenizer)):
        if not folder.is_dir():
            raise ShapeFileError(
                f"the reward model's {role} folder {str(folder)!r} does not exist; copy it "
                "there, or export with --copy-rm so the export carries it"
            )
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            files.model, local_files_only=True, trust_remote_code=False
        )
        tokenizer = AutoTokenizer.from_pretrained(files.tokenizer, local_files_only=True)
        return HFRewardModel(model, tokenizer, files.mask_token_id)
    except (OSError, ValueError) as e:
        raise ShapeFileError(
            f"the reward model in {str(files.model)!r} cannot be loaded: {e}"
        ) from e


@dataclass(frozen=True)
class Shaped:
    rewards: torch.Tensor
    """(B, T) float32 per-token rewards, zero on padding; before any KL penalty."""
    scores: torch.Tensor
    """(B,) the reward model's score R of each response: what the rewards redistribute."""


class ShapedRewards:
    """The shape as a function of padded batches: prompts left-padded, responses
    right-padded, in the ids of `policy_tokenizer` (the trainer's actor; the RM retokenizes
    when its vocabulary differs)."""

    def __init__(
        self,
        shape: PortableShape,
        rm: HFRewardModel,
        policy_tokenizer: PreTrainedTokenizerBase,
        device: torch.device,
        explainer: CreditNet | None = None,
    ) -> None:
        self.shaper = build_shaper(
            rm, shape.shaping, shape.shaping.options, policy_tokenizer, device
        )
        amortized = self.shaper.attributors.get("amortized")
        if isinstance(amortized, AmortizedAttributor) and explainer is not None:
            amortized.use_explainer(explainer)
        self.scorer = self.shaper.scorer
        pad = policy_tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else policy_tokenizer.eos_token_id or 0)

    @classmethod
    def load(
        cls,
        path: Path,
        policy_tokenizer: PreTrainedTokenizerBase,
        device: str = "cpu",
    ) -> ShapedRewards:
        """`device` as a run's config names it ("auto": CUDA where there is one). An
        `amortized` shape starts from the explainer exported beside `path`."""
        shape = PortableShape.load(path)
        explainer = Path(path).with_name(EXPLAINER_FILE)
        return cls(
            shape,
            load_reward_model(shape.reward_model),
            policy_tokenizer,
            resolve_device(device),
            load_net(explainer) if explainer.is_file() else None,
        )

    def __call__(
        self,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        response_ids: torch.Tensor,
        response_mask: torch.Tensor,
    ) -> Shaped:
        prompts = [row[m.bool()].tolist() for row, m in zip(prompt_ids, prompt_mask, strict=True)]
        responses = [
            row[m.bool()].tolist() for row, m in zip(response_ids, response_mask, strict=True)
        ]
        scores = self.scorer.score_responses(prompts, responses)
        # The batch the inner PPO run builds, so that the shaper sees what it saw there.
        batch = RolloutBatch.from_lists(prompts, responses, scores.tolist(), self.pad_id)
        shaped = self.shaper(batch).float().cpu()
        rewards = torch.zeros(response_ids.shape, dtype=torch.float32)
        rewards[:, : shaped.shape[1]] = shaped
        return Shaped(rewards * response_mask.cpu(), scores.float().cpu())
