"""What every task gives the inner PPO run."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # annotations only: importing this module stays cheap
    import numpy as np
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from shaping.reward_model import RewardModel

Split = Literal["train", "eval"]


class TaskError(ValueError):
    """A task could not be built or loaded; the message says what to fix."""


@dataclass(frozen=True)
class TaskInfo:
    name: str
    description: str
    details: dict[str, object]


@dataclass(frozen=True)
class RewardModelFiles:
    """Where a task's Hugging Face reward model lies on disk: what an exported shape names so
    that another trainer loads the same model."""

    model: Path
    """A folder `AutoModelForSequenceClassification.from_pretrained` loads."""
    tokenizer: Path
    """A folder `AutoTokenizer.from_pretrained` loads: the RM's tokenizer."""
    mask_token_id: int | None = None
    """The token that replaces masked players; None: the tokenizer's mask, else its pad."""


class Task(ABC):
    """A policy to train, a reward model to shape, prompts, and optionally a gold judge.

    `load_policy` returns a fresh copy every call: PPO needs the trained policy and a frozen
    reference, and a retried trial needs the untouched start.
    """

    name: str
    tokenizer: PreTrainedTokenizerBase
    response_length: int

    @abstractmethod
    def load_policy(self) -> PreTrainedModel: ...

    @abstractmethod
    def load_reward_model(self) -> RewardModel: ...

    @abstractmethod
    def prompts(self, split: Split) -> list[list[int]]:
        """Prompt token ids of the policy's tokenizer, BOS included where the policy uses one."""

    def encode_prompt(self, text: str) -> list[int]:
        """A user's prompt text in the policy's ids, built as the task builds its own."""
        return list(self.tokenizer(text)["input_ids"])

    def gold(self, texts: Sequence[str]) -> np.ndarray | None:
        """An independent judge of the same texts, to expose reward hacking; None if absent."""
        return None

    @abstractmethod
    def info(self) -> TaskInfo: ...

    def reward_model_files(self) -> RewardModelFiles | None:
        """The reward model's folders, for an export; None for an RM that is no Hugging Face
        model on disk (a reward function written in torch)."""
        return None

    def max_response_length(self) -> int | None:
        """Most response tokens the task's models can take after its longest prompt (their
        position embeddings end there); None where no limit is known."""
        return None


def check_response_length(value: int, limit: int = 128) -> int:
    if not 1 <= value <= limit:
        raise TaskError(f"response_length={value} is out of range; choose 1..{limit} tokens")
    return value
