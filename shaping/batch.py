"""RolloutBatch: what the policy wrote and what the reward model said of it."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


class BatchError(ValueError):
    """A rollout batch that cannot be shaped; the message names the row and the problem."""


@dataclass(frozen=True)
class RolloutBatch:
    """B responses to B prompts, in the policy's token ids.

    Prompts may be left-padded (as `generate` needs them); responses are right-padded, so a
    response's tokens are `response_ids[i, : lengths[i]]`.
    """

    prompt_ids: torch.Tensor  # (B, P)
    prompt_mask: torch.Tensor  # (B, P) 1 = token, 0 = padding
    response_ids: torch.Tensor  # (B, T)
    response_mask: torch.Tensor  # (B, T) 1 = token, 0 = padding after the response
    scores: torch.Tensor  # (B,) the RM's score R of each full response

    def __post_init__(self) -> None:
        B, T = self.response_ids.shape
        if self.prompt_ids.shape[0] != B or self.scores.shape != (B,):
            raise BatchError(
                f"batch sizes disagree: {self.prompt_ids.shape[0]} prompts, {B} responses, "
                f"{tuple(self.scores.shape)} scores"
            )
        if self.response_mask.shape != (B, T) or self.prompt_mask.shape != self.prompt_ids.shape:
            raise BatchError("each mask must have the shape of its ids")
        lengths = self.response_mask.sum(1)
        for i in range(B):
            n = int(lengths[i])
            if n == 0:
                raise BatchError(f"response {i} is empty: nothing to assign credit to")
            if not bool(self.response_mask[i, :n].all()):
                raise BatchError(f"response {i} is not right-padded (a gap inside its mask)")
            if int(self.prompt_mask[i].sum()) == 0:
                raise BatchError(f"prompt {i} is empty")
            if not math.isfinite(float(self.scores[i])):
                raise BatchError(
                    f"response {i} has a non-finite reward score ({float(self.scores[i])}); "
                    "check the reward model's output for this text"
                )

    @property
    def size(self) -> int:
        return int(self.response_ids.shape[0])

    @property
    def lengths(self) -> torch.Tensor:  # (B,)
        return self.response_mask.sum(1)

    def select(self, rows: list[int]) -> RolloutBatch:
        """The responses `rows` of this batch, as a batch (padding width kept)."""
        index = torch.tensor(rows, dtype=torch.long)
        return RolloutBatch(
            self.prompt_ids[index],
            self.prompt_mask[index],
            self.response_ids[index],
            self.response_mask[index],
            self.scores[index],
        )

    def prompt(self, i: int) -> list[int]:
        ids: list[int] = self.prompt_ids[i][self.prompt_mask[i].bool()].tolist()
        return ids

    def response(self, i: int) -> list[int]:
        ids: list[int] = self.response_ids[i, : int(self.lengths[i])].tolist()
        return ids

    @classmethod
    def from_lists(
        cls, prompts: list[list[int]], responses: list[list[int]], scores: list[float], pad_id: int
    ) -> RolloutBatch:
        """Pad ragged token lists: prompts on the left, responses on the right."""
        P = max(map(len, prompts))
        T = max(map(len, responses))
        B = len(prompts)
        prompt_ids = torch.full((B, P), pad_id, dtype=torch.long)
        prompt_mask = torch.zeros((B, P), dtype=torch.long)
        response_ids = torch.full((B, T), pad_id, dtype=torch.long)
        response_mask = torch.zeros((B, T), dtype=torch.long)
        for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
            if p:
                prompt_ids[i, P - len(p) :] = torch.tensor(p)
                prompt_mask[i, P - len(p) :] = 1
            if r:
                response_ids[i, : len(r)] = torch.tensor(r)
                response_mask[i, : len(r)] = 1
        return cls(
            prompt_ids,
            prompt_mask,
            response_ids,
            response_mask,
            torch.tensor(scores, dtype=torch.float32),
        )
