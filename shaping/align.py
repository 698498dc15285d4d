"""Reward-model tokens vs policy tokens: a RolloutBatch re-tokenised for the RM, and the map
that carries credits back.

When the RM has its own tokenizer, attribution runs on the RM's tokens (masking an RM token
is what the RM can see) and each RM token's credit is split over the policy tokens whose
characters it overlaps, in proportion to the overlap. Every response RM token overlaps at
least one policy token or is attached to the nearest one, so the map preserves each row's
sum: a conserving method stays conserving.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from shaping.batch import BatchError, RolloutBatch

Span = tuple[int, int]


def decode_spans(
    tokenizer: PreTrainedTokenizerBase, prompt: Sequence[int], response: Sequence[int]
) -> tuple[str, str, list[Span]]:
    """The prompt's text, the response's text, and each response token's character span in
    the latter, by decoding the growing row.

    Decoding prompt and response together (rather than each token alone, or the response
    without its prompt) keeps the spaces and multi-byte characters between them exactly as
    in the full text; a token that adds no character gets an empty span.
    """

    def text(ids: Sequence[int]) -> str:
        return str(tokenizer.decode(list(ids), skip_special_tokens=True))

    prompt_text, full = text(prompt), text([*prompt, *response])
    if not full.startswith(prompt_text):  # a tokenizer that rewrites across the boundary
        prompt_text = ""
    shift = len(prompt_text)
    spans: list[Span] = []
    previous = 0
    for t in range(1, len(response) + 1):
        end = (
            len(text([*prompt, *response[:t]])) - shift if t < len(response) else len(full) - shift
        )
        end = max(end, previous)  # a partial multi-byte character can shorten the text
        spans.append((previous, end))
        previous = end
    return prompt_text, full[shift:], spans


def overlap_matrix(src: Sequence[Span], dst: Sequence[Span]) -> torch.Tensor:
    """(len(src), len(dst)): row j splits source token j over the destination tokens by the
    characters they share; a source token sharing none goes wholly to the nearest one."""
    out = torch.zeros(len(src), len(dst))
    if not dst:
        return out
    starts = torch.tensor([s for s, _ in dst], dtype=torch.float32)
    for j, (a, b) in enumerate(src):
        for k, (c, d) in enumerate(dst):
            out[j, k] = max(0, min(b, d) - max(a, c))
        total = out[j].sum()
        if total > 0:
            out[j] /= total
        else:  # zero-width (a special token) or only whitespace the other side dropped
            out[j, int((starts - a).abs().argmin())] = 1.0
    return out


@dataclass(frozen=True)
class RmView:
    """A batch as the RM sees it, and how to carry RM-token credits back to policy tokens."""

    batch: RolloutBatch
    maps: list[torch.Tensor] | None = None
    """Per response: (T_rm_i, T_policy_i) overlap weights; None when the tokens are the same."""
    policy_shape: tuple[int, int] | None = None

    def to_policy(self, credits: torch.Tensor) -> torch.Tensor:
        """(B, T_rm) credits -> (B, T_policy); identity when the tokenizers agree."""
        if self.maps is None or self.policy_shape is None:
            return credits
        out = torch.zeros(self.policy_shape)
        for i, m in enumerate(self.maps):
            out[i, : m.shape[1]] = credits[i, : m.shape[0]] @ m  # (T_rm,) @ (T_rm, T) -> (T,)
        return out


def retokenize(
    batch: RolloutBatch,
    policy_tokenizer: PreTrainedTokenizerBase,
    rm_tokenizer: PreTrainedTokenizerBase,
    pad_id: int,
) -> RmView:
    """Decode each prompt and response with the policy's tokenizer and encode the text with
    the RM's (special tokens included, as the RM was trained). RM tokens that end inside the
    prompt's text are the prompt (never masked); the rest are the response's players."""
    if not getattr(rm_tokenizer, "is_fast", False):
        raise TypeError(
            "the reward model's tokenizer must be a fast tokenizer (it gives character "
            "offsets); save it with `tokenizer.json`"
        )
    prompts, responses, maps = [], [], []
    for i in range(batch.size):
        prompt_text, response_text, policy_spans = decode_spans(
            policy_tokenizer, batch.prompt(i), batch.response(i)
        )
        text = prompt_text + response_text
        enc = rm_tokenizer(text, return_offsets_mapping=True, add_special_tokens=True)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        # First RM token that reaches into the response (a zero-width special token at the
        # very start belongs to the prompt).
        cut = next(
            (k for k, (a, b) in enumerate(offsets) if b > len(prompt_text) and b > a),
            len(ids),
        )
        if cut == len(ids):
            raise BatchError(
                f"response {i} ({response_text!r}) has no characters the reward model's "
                "tokenizer can see; the policy wrote only special or empty tokens"
            )
        shift = len(prompt_text)
        rm_spans = [(max(a, shift) - shift, max(b, shift) - shift) for a, b in offsets[cut:]]
        if cut == 0:
            raise BatchError(
                f"prompt {i} ({prompt_text!r}) gives the reward model no token of its own; "
                "give prompts with text, or an RM tokenizer that adds a BOS token"
            )
        prompts.append(list(ids[:cut]))
        responses.append(list(ids[cut:]))
        maps.append(overlap_matrix(rm_spans, policy_spans))
    rm_batch = RolloutBatch.from_lists(prompts, responses, batch.scores.tolist(), pad_id)
    B, T = batch.response_ids.shape
    return RmView(rm_batch, maps, (int(B), int(T)))
