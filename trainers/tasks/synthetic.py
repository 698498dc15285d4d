"""The synthetic task: a cheap reward whose exact Shapley values are known in closed form.

The reward of a row (prompt + response) is a sum of per-token values plus interactions of
adjacent tokens:

    v(y) = sum_t u[y_t] + sum_t w[y_{t-1}, y_t]

where masked, padding and end tokens contribute nothing and break adjacency. Masking a set
of response tokens is the Shapley game `v(S)`; its Shapley values are

    phi_t = u[y_t] + w[y_{t-1}, y_t] / 2 + w[y_t, y_{t+1}] / 2

with the interaction with the (never masked) last prompt token given wholly to y_1. That
makes it the known-answer test for every attributor, and a fast inner problem for
benchmarking the outer loop with many trials.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from trainers.tasks.base import Split, Task, TaskError, TaskInfo, check_response_length

SPECIALS = ["<eos>", "<pad>", "<mask>"]


def word_tokenizer(n_words: int) -> PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate([*SPECIALS, *(f"w{i}" for i in range(n_words))])}
    core = Tokenizer(WordLevel(vocab, unk_token="<eos>"))
    core.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<eos>",
        eos_token="<eos>",
        unk_token="<eos>",
        pad_token="<pad>",
        mask_token="<mask>",
    )


class SyntheticReward(torch.nn.Module):
    """The reward above as an RM: scores rows, and every prefix in one pass."""

    u: torch.Tensor
    w: torch.Tensor
    tokenizer: PreTrainedTokenizerBase
    mask_token_id: int
    causal: bool

    def __init__(self, tokenizer: PreTrainedTokenizerFast, seed: int, interaction: float) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        V = len(tokenizer)
        special = torch.tensor(tokenizer.all_special_ids)
        u = torch.randn(V, generator=g)
        w = interaction * torch.randn(V, V, generator=g)
        u[special] = 0.0
        w[special, :] = 0.0
        w[:, special] = 0.0
        self.register_buffer("u", u)  # (V,)
        self.register_buffer("w", w)  # (V, V)
        self.tokenizer = tokenizer
        self.mask_token_id = int(tokenizer.mask_token_id)
        self.causal = True

    def contributions(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, T) -> (B, T): what position t adds to the score of the prefix ending before it."""
        ids = ids * mask  # padding reads as token 0, a special token worth nothing
        c = self.u[ids]
        c[:, 1:] += self.w[ids[:, :-1], ids[:, 1:]]
        return c * mask

    def prefix_scores(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.contributions(ids, mask).cumsum(dim=1)

    def scores(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.contributions(ids, mask).sum(dim=1)

    def scores_and_states(
        self, ids: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """This reward has no layers: a token's "hidden state" is its one-hot id, which tells
        a credit network what the token is but not, unlike an RM's state, its context."""
        states = torch.nn.functional.one_hot(ids * mask, self.u.shape[0]).float()
        return self.prefix_scores(ids, mask), states * mask[..., None]

    def attentions(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """This reward has no attention layers: each position's share of the absolute
        contributions stands in for it, so attention-based credit runs on this task too."""
        c = self.contributions(ids, mask).abs()
        return c / c.sum(dim=1, keepdim=True).clamp_min(1e-12)

    def exact_shapley(self, prompt: list[int], response: list[int]) -> torch.Tensor:
        """Closed-form Shapley values of the response tokens as players: (T,)."""
        y = torch.tensor(response)
        phi = self.u[y].clone()
        pair = self.w[y[:-1], y[1:]]  # (T - 1,) interactions inside the response: shared
        phi[1:] += pair / 2
        phi[:-1] += pair / 2
        if prompt:  # the prompt is never masked: y_1's interaction with it is y_1's alone
            phi[0] += self.w[prompt[-1], response[0]]
        return phi


class SyntheticTask(Task):
    """Random word sequences; a tiny GPT-2 policy from a config (no files needed)."""

    name = "synthetic"

    def __init__(
        self,
        n_words: int = 32,
        prompt_length: int = 4,
        response_length: int = 8,
        interaction: float = 0.5,
        train_prompts: int = 512,
        eval_prompts: int = 64,
        seed: int = 0,
    ) -> None:
        if not 2 <= n_words <= 4096:
            raise TaskError(f"n_words={n_words} is out of range; choose 2..4096")
        if not 1 <= prompt_length <= 64:
            raise TaskError(f"prompt_length={prompt_length} is out of range; choose 1..64")
        if interaction < 0:
            raise TaskError(f"interaction={interaction} must be >= 0")
        if train_prompts < 1 or eval_prompts < 1:
            raise TaskError("train_prompts and eval_prompts must be >= 1")
        self.seed = seed
        self.prompt_length = prompt_length
        self.response_length = check_response_length(response_length)
        self.tokenizer = word_tokenizer(n_words)
        self._reward = SyntheticReward(self.tokenizer, seed, interaction)
        g = torch.Generator().manual_seed(seed + 1)
        first_word = len(SPECIALS)
        words = torch.randint(
            first_word,
            len(self.tokenizer),
            (train_prompts + eval_prompts, prompt_length),
            generator=g,
        )
        bos = self.tokenizer.bos_token_id
        rows = [[bos, *r] for r in words.tolist()]
        self._prompts = {"train": rows[:train_prompts], "eval": rows[train_prompts:]}
        self._options = {"n_words": n_words, "interaction": interaction}

    def load_policy(self) -> PreTrainedModel:
        torch.manual_seed(self.seed)
        config = GPT2Config(
            vocab_size=len(self.tokenizer),
            n_positions=self.prompt_length + 1 + self.response_length,
            n_embd=32,
            n_layer=1,
            n_head=2,
            bos_token_id=self.tokenizer.bos_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        return GPT2LMHeadModel(config).eval()

    def load_reward_model(self) -> SyntheticReward:
        return self._reward

    def prompts(self, split: Split) -> list[list[int]]:
        return [list(p) for p in self._prompts[split]]

    def encode_prompt(self, text: str) -> list[int]:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return [self.tokenizer.bos_token_id, *ids]

    def max_response_length(self) -> int:
        return self.response_length  # the policy's positions end there (`load_policy`)

    def info(self) -> TaskInfo:
        return TaskInfo(
            self.name,
            "random word prompts; reward = token values + adjacent interactions (exact Shapley known)",
            {
                "seed": self.seed,
                "prompt_length": self.prompt_length,
                "response_length": self.response_length,
                **self._options,
            },
        )
