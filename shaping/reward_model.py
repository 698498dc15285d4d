"""The reward model as the rest of shapetune sees it.

One protocol, two kinds of model behind it: any Hugging Face sequence-classification RM,
and small reward functions written in torch (the synthetic task). A *causal* RM whose score
head reads the hidden state at every position scores every prefix of a response in one
forward pass; RED and the scorer's prefix sharing rely on that.
"""

from __future__ import annotations

import copy
from typing import Protocol, runtime_checkable

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase


@runtime_checkable
class RewardModel(Protocol):
    tokenizer: PreTrainedTokenizerBase
    mask_token_id: int
    """Replaces masked players' tokens when the scorer evaluates coalitions."""
    causal: bool
    """True when `prefix_scores` is available (one pass scores every prefix)."""

    def scores(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, T) right-padded ids and mask -> (B,) score of each full row."""
        ...

    def prefix_scores(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, T) -> (B, T): column t is the score of ids[:, : t + 1]."""
        ...

    def attentions(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, T) -> (B, T): last-layer attention from the scoring position to every position,
        averaged over heads (ABC's `a_t`); zero on padding."""
        ...


@runtime_checkable
class HasStates(Protocol):
    """A reward model that also hands out its last hidden states (the `amortized` method's
    inputs), from the same forward pass that scores."""

    def scores_and_states(
        self, ids: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) -> what `prefix_scores` gives for a causal RM ((B, T); `scores`' (B,) for
        any other), and the last layer's hidden states (B, T, H)."""
        ...


def gives_states(rm: object) -> bool:
    """Whether `rm` gives its hidden states (`HasStates`); a wrapper that always has the
    method says, in `gives_states`, whether the model it wraps does."""
    return isinstance(rm, HasStates) and bool(getattr(rm, "gives_states", True))


class NoStatesError(TypeError):
    """A method needs hidden states from a reward model that gives none."""

    def __init__(self, rm: object) -> None:
        super().__init__(
            f"method 'amortized' reads the reward model's hidden states, and "
            f"{type(rm).__name__} gives none: give it a `scores_and_states(ids, mask)` method "
            "(shaping.reward_model.HasStates), or use the teacher method itself"
        )


def head_prefix_scores(
    model: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Score every position of a decoder `*ForSequenceClassification` model: (B, T), with the
    hidden states scored (B, T, H).

    These models (GPT-2, Llama, Qwen, ...) apply their `score` head to every hidden state and
    pool the last non-pad one; we skip the pooling.
    """
    hidden = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, T, H)
    return model.score(hidden).squeeze(-1), hidden  # type: ignore[operator]


class HFRewardModel:
    """Any `AutoModelForSequenceClassification` with one output; causal if it has a `score`
    head on a decoder (the built-in RM does)."""

    tokenizer: PreTrainedTokenizerBase
    mask_token_id: int
    causal: bool

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        mask_token_id: int | None = None,
    ) -> None:
        if getattr(model.config, "num_labels", 1) != 1:
            raise ValueError(
                f"the reward model must have one output (num_labels=1); this one has "
                f"{model.config.num_labels}. Fine-tune a scalar head, or pick the RM checkpoint."
            )
        fallback = (
            tokenizer.mask_token_id
            if tokenizer.mask_token_id is not None
            else tokenizer.pad_token_id
        )
        chosen = mask_token_id if mask_token_id is not None else fallback
        if chosen is None:
            raise ValueError(
                "the reward model's tokenizer has neither a mask nor a pad token; pass "
                "mask_token_id explicitly"
            )
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.mask_token_id = int(chosen)
        self.causal = isinstance(getattr(model, "score", None), torch.nn.Linear) and not getattr(
            model.config, "is_encoder_decoder", False
        )

    def scores(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.causal:
            # Same numbers as the model's own pooling, which needs pad_token_id to find the end.
            last = mask.sum(1) - 1
            return self.prefix_scores(ids, mask)[torch.arange(ids.shape[0]), last]
        return self.model(input_ids=ids, attention_mask=mask).logits[:, 0]

    def attentions(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # SDPA kernels return no attention weights; the eager path does, for this pass only.
        previous = self.model.config._attn_implementation
        self.model.set_attn_implementation("eager")
        try:
            out = self.model.base_model(input_ids=ids, attention_mask=mask, output_attentions=True)
        finally:
            self.model.set_attn_implementation(previous)
        last_layer = out.attentions[-1].mean(dim=1)  # (B, heads, T, T) -> (B, T, T)
        # Decoders score at the last token, encoders at the first ([CLS]).
        at = mask.sum(1) - 1 if self.causal else torch.zeros(ids.shape[0], dtype=torch.long)
        return last_layer[torch.arange(ids.shape[0]), at] * mask  # (B, T)

    def prefix_scores(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if not self.causal:
            raise TypeError(
                f"{type(self.model).__name__} cannot score every prefix in one pass; "
                "score each prefix as its own row instead"
            )
        return head_prefix_scores(self.model, ids, mask)[0]

    def scores_and_states(
        self, ids: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.causal:
            return head_prefix_scores(self.model, ids, mask)
        out = self.model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        return out.logits[:, 0], out.hidden_states[-1]


def in_dtype(rm: RewardModel, dtype: torch.dtype) -> HFRewardModel:
    """A copy of a Hugging Face RM whose weights are `dtype` (bfloat16: the scorer's cheaper
    model for masked variants). Only an HF model can be cast; a reward function in torch has
    no weights to cast."""
    if not isinstance(rm, HFRewardModel):
        raise ValueError(
            f"the reward model ({type(rm).__name__}) is no Hugging Face model: it cannot be "
            f"cast to {dtype}; set shaping.coalition_dtype: float32"
        )
    cast = copy.deepcopy(rm.model).to(dtype)
    return HFRewardModel(cast, rm.tokenizer, rm.mask_token_id)
