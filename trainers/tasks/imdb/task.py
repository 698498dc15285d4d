"""Load the prepared imdb-sentiment task."""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

import numpy as np
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from shaping.reward_model import HFRewardModel
from trainers.tasks import cache
from trainers.tasks.base import (
    RewardModelFiles,
    Split,
    Task,
    TaskError,
    TaskInfo,
    check_response_length,
)
from trainers.tasks.gold import vader_compound
from trainers.tasks.imdb.config import SIZES, PrepareConfig
from trainers.tasks.imdb.data import Example, read_jsonl
from trainers.tasks.imdb.prepare import STAGES, TASK_NAME, task_root


class ImdbSentimentTask(Task):
    """Continue the opening of a held-out review; the RM rewards positive sentiment.

    Prompts are the first `prompt_tokens` tokens of held-out IMDB reviews; the first
    `eval_prompts` of them are kept for evaluation, the rest are PPO's training prompts.
    """

    name = TASK_NAME

    def __init__(
        self,
        home: Path,
        size: str = "default",
        seed: int = 0,
        prompt_tokens: int = 8,
        response_length: int = 24,
        eval_prompts: int = 256,
    ) -> None:
        if size not in SIZES:
            raise TaskError(f"unknown size {size!r} for {TASK_NAME}; choose one of {sorted(SIZES)}")
        if not 1 <= prompt_tokens <= 64:
            raise TaskError(f"prompt_tokens={prompt_tokens} is out of range; choose 1..64")
        self.root = task_root(home, PrepareConfig(size=size, seed=seed))
        for stage in STAGES:
            valid, reason = cache.verify_stage(self.root / stage)
            if not valid:
                raise TaskError(
                    f"{TASK_NAME} (size {size}, seed {seed}) is not prepared under {home}: "
                    f"stage {stage!r}: {reason}. Run `shapetune prepare --size {size} "
                    f"--seed {seed}` (SHAPETUNE_HOME={home})."
                )
        self.size, self.seed = size, seed
        self.prompt_tokens = prompt_tokens
        self.response_length = check_response_length(response_length)
        self.eval_prompts = eval_prompts
        self.tokenizer = PreTrainedTokenizerFast.from_pretrained(self.root / "policy")

    @cached_property
    def _reviews(self) -> list[Example]:
        return [e for e in read_jsonl(self.root / "data" / "heldout.jsonl") if e.source == "imdb"]

    def load_policy(self) -> PreTrainedModel:
        return AutoModelForCausalLM.from_pretrained(self.root / "policy").eval()

    def load_reward_model(self) -> HFRewardModel:
        model = AutoModelForSequenceClassification.from_pretrained(self.root / "reward_model")
        return HFRewardModel(model, self.tokenizer)

    def reward_model_files(self) -> RewardModelFiles:
        # The RM reads the policy's tokens: its tokenizer is the policy's.
        return RewardModelFiles(self.root / "reward_model", self.root / "policy")

    def prompts(self, split: Split) -> list[list[int]]:
        reviews = (
            self._reviews[: self.eval_prompts]
            if split == "eval"
            else self._reviews[self.eval_prompts :]
        )
        # Only a review's opening is needed: tokenising whole reviews took a second per call.
        # Cut after (prompt_tokens + 1) tokens' worth of the longest token's characters, and
        # the first prompt_tokens tokens of the cut text are those of the whole review.
        longest = max(len(t) for t in self.tokenizer.get_vocab())
        openings = [e.text[: longest * (self.prompt_tokens + 1)] for e in reviews]
        ids = self.tokenizer(openings, add_special_tokens=False)["input_ids"]
        return [[self.tokenizer.bos_token_id, *r[: self.prompt_tokens]] for r in ids]

    def encode_prompt(self, text: str) -> list[int]:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return [self.tokenizer.bos_token_id, *ids]

    def max_response_length(self) -> int:
        # Read from the policy's config.json alone: no weights are loaded to check a spec.
        config = json.loads((self.root / "policy" / "config.json").read_text(encoding="utf-8"))
        return int(config["n_positions"]) - (self.prompt_tokens + 1)  # + 1: the BOS token

    def gold(self, texts: Sequence[str]) -> np.ndarray:
        return vader_compound(texts)

    def info(self) -> TaskInfo:
        report = cache.read_record(self.root / "report")["info"]
        return TaskInfo(
            self.name,
            "continue a held-out IMDB review opening; RM = positive-sentiment log-odds; gold = VADER",
            {
                "root": str(self.root),
                "size": self.size,
                "seed": self.seed,
                "prompt_tokens": self.prompt_tokens,
                "response_length": self.response_length,
                "vocab_size": len(self.tokenizer),
                **{k: v for k, v in report.items() if k != "samples"},
                "samples": report.get("samples", []),
            },
        )
