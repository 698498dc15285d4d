"""SCAR: Shapley values of the game v(S) = r(x, y_S), players masked with the RM's mask token.

Players are tokens, words, or spans cut after `. , ; ? !` (SCAR's adaptive segmentation);
a player's value goes on its last token (SCAR) or is spread over its tokens. Exact by
enumerating all 2^M coalitions up to `max_exact_players`; above that, antithetic
permutation sampling: each permutation's marginal contributions telescope to
v(N) - v(empty), so the estimate conserves the return exactly, like the exact value.
"""

from __future__ import annotations

import itertools
import math
from typing import Literal

import torch

from shaping.attribution.base import Attributor
from shaping.batch import RolloutBatch
from shaping.scorer import RewardScorer

Unit = Literal["token", "word", "span"]
SPAN_ENDS = (".", ",", ";", "?", "!")


def _starts_player(previous: str, piece: str, unit: Unit) -> bool:
    if unit == "word":  # a new word: leading space, or punctuation standing alone
        return piece[:1].isspace() or not piece.strip().isalnum()
    if unit == "span":  # a new span after a delimiter
        return previous.strip().endswith(SPAN_ENDS)
    return True


def player_ids(pieces: list[str], unit: Unit) -> torch.Tensor:
    """(T,) the player of each token (its decoded text in `pieces`), numbered from 0."""
    ids = [0]
    for previous, piece in itertools.pairwise(pieces):
        ids.append(ids[-1] + int(_starts_player(previous, piece, unit)))
    return torch.tensor(ids[: len(pieces)])


def exact_shapley(values: torch.Tensor, M: int) -> torch.Tensor:
    """Shapley values from v over all 2^M coalitions, coalition k = the bits of k: (M,).

    phi_j = sum over S without j of |S|! (M - |S| - 1)! / M! * (v(S + j) - v(S)), for all j
    at once: one (2^M, M) table of marginal gains, zero where j is already in S.
    """
    k = torch.arange(2**M)
    bit = 1 << torch.arange(M)  # (M,)
    without = (k[:, None] & bit) == 0  # (2^M, M): j not in coalition k
    sizes = M - without.sum(dim=1)  # (2^M,)
    # |S|! (M - |S| - 1)! / M! = 1 / (M * C(M - 1, |S|)); the full coalition gets no weight.
    weight = torch.tensor(
        [1 / (M * math.comb(M - 1, s)) for s in range(M)] + [0.0], dtype=torch.float64
    )
    v = values.double()
    gain = v[k[:, None] | bit] - v[:, None]  # (2^M, M): v(S + j) - v(S)
    phi = (weight[sizes][:, None] * gain * without).sum(dim=0)
    return phi.float()


class ShapleyAttributor(Attributor):
    name = "shapley"
    conserves = True

    def __init__(
        self,
        scorer: RewardScorer,
        unit: Unit = "token",
        max_exact_players: int = 10,
        permutations: int = 8,
        placement: Literal["last", "spread"] = "last",
        seed: int = 0,
    ) -> None:
        super().__init__(scorer)
        if unit not in ("token", "word", "span"):
            raise ValueError(f"unit={unit!r}; choose token, word or span")
        if placement not in ("last", "spread"):
            raise ValueError(f"placement={placement!r}; choose last or spread")
        if permutations < 2 or permutations % 2:
            raise ValueError(
                f"permutations={permutations} must be even and >= 2 (antithetic pairs)"
            )
        if not 1 <= max_exact_players <= 16:
            raise ValueError(f"max_exact_players={max_exact_players}; choose 1..16 (2^M rows)")
        self.unit, self.placement = unit, placement
        self.max_exact_players, self.permutations = max_exact_players, permutations
        self.generator = torch.Generator().manual_seed(seed)

    def players(self, batch: RolloutBatch, i: int) -> torch.Tensor:
        pieces = [str(self.scorer.rm.tokenizer.decode([t])) for t in batch.response(i)]
        return player_ids(pieces, self.unit)

    def _coalitions(self, M: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Player-level coalitions (K, M) and, when sampled, the permutations (N, M)."""
        if self.max_exact_players >= M:
            k = torch.arange(2**M)
            return (k[:, None] >> torch.arange(M)) & 1 == 1, None
        half = [torch.randperm(M, generator=self.generator) for _ in range(self.permutations // 2)]
        perms = torch.stack([p for q in half for p in (q, q.flip(0))])  # antithetic pairs
        rank = torch.argsort(perms, dim=1)  # rank[n, j] = position of player j in perm n
        prefix = torch.arange(M + 1)[None, :, None] > rank[:, None, :]  # (N, M+1, M)
        return prefix.reshape(-1, M), perms

    def _credits(self, batch: RolloutBatch) -> torch.Tensor:
        plans, coalitions = [], []
        for i in range(batch.size):
            owner = self.players(batch, i)  # (T_i,)
            M = int(owner.max()) + 1
            player_sets, perms = self._coalitions(M)
            plans.append((owner, M, perms))
            coalitions.append(player_sets[:, owner])  # players -> tokens: (K, T_i)
        values = self.scorer.coalition_values(batch, coalitions)
        credits = torch.zeros(batch.response_ids.shape)
        for i, ((owner, M, perms), v) in enumerate(zip(plans, values, strict=True)):
            if perms is None:
                phi = exact_shapley(v, M)
            else:
                marginal = v.view(perms.shape[0], M + 1).diff(dim=1)  # (N, M) by position
                phi = torch.zeros(M).scatter_add_(0, perms.flatten(), marginal.flatten())
                phi /= perms.shape[0]
            credits[i, : owner.shape[0]] = self._place(phi, owner)
        return credits

    def _place(self, phi: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
        """Player values -> token credits (T,)."""
        if self.placement == "spread":
            counts = torch.bincount(owner).float()
            return phi[owner] / counts[owner]
        out = torch.zeros(owner.shape[0])
        last = torch.zeros(phi.shape[0], dtype=torch.long).scatter_reduce_(
            0, owner, torch.arange(owner.shape[0]), reduce="amax", include_self=False
        )
        out[last] = phi
        return out
