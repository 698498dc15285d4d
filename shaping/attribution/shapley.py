"""SCAR: Shapley values of the game v(S) = r(x, y_S), players masked with the RM's mask token.

Players are tokens, words, or spans cut after `. , ; ? !` (SCAR's adaptive segmentation);
a player's value goes on its last token (SCAR) or is spread over its tokens. Exact by
enumerating all 2^M coalitions up to `max_exact_players`; above that, antithetic
permutation sampling: each permutation's marginal contributions telescope to
v(N) - v(empty), so the estimate conserves the return exactly, like the exact value.

Words and spans are found in the decoded response text, not in each token decoded alone:
a token alone may decode without the space the text has before it (a word-level
tokenizer), or as half of a character (byte-level BPE).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar, Literal

import torch

from shaping.align import Span, decode_spans
from shaping.attribution.base import Attributor
from shaping.attribution.options import Choice, Integer, Options
from shaping.batch import RolloutBatch
from shaping.scorer import RewardScorer

Unit = Literal["token", "word", "span"]
UNITS = ("token", "word", "span")
PLACEMENTS = ("last", "spread")
SPAN_ENDS = (".", ",", ";", "?", "!")


def text_groups(text: str, unit: Literal["word", "span"]) -> list[int]:
    """The word (or span) of each character of `text`, numbered in order.

    A word starts at a non-space character after whitespace, and every punctuation mark is a
    word of its own; a span starts after a run of `SPAN_ENDS` ("?!" and "..." cut once).
    Whitespace belongs to what follows it, as a leading-space token does; trailing
    whitespace to what precedes it.
    """
    groups, g = [], -1
    previous, gap = "", True  # the last non-space character; whether whitespace followed it
    for c in text:
        if c.isspace():
            gap = True
        else:
            if unit == "word":
                g += int(gap or not c.isalnum() or not previous.isalnum())
            else:
                g += int(not previous or (previous in SPAN_ENDS and c not in SPAN_ENDS))
            previous, gap = c, False
        groups.append(g)
    following = None
    for p in reversed(range(len(text))):
        if not text[p].isspace():
            following = groups[p]
        elif following is not None:
            groups[p] = following
    return groups


def player_ids(text: str, spans: Sequence[Span], unit: Unit) -> torch.Tensor:
    """(T,) the player of each token, numbered from 0, from its character span in the
    decoded response `text` (`shaping.align.decode_spans`).

    A token starts a new word or span when its first character does; a token with no
    character of its own (an empty span: the second half of a character, or a special
    token) joins the player before it.
    """
    if unit == "token":
        return torch.arange(len(spans))
    groups = text_groups(text, unit)
    ids, player, current = [], 0, None
    for start, end in spans:
        if start < min(end, len(groups)):
            if current is not None and groups[start] != current:
                player += 1
            current = groups[start]
        ids.append(player)
    return torch.tensor(ids, dtype=torch.long)


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

    options: ClassVar[Options] = {
        "unit": Choice(UNITS),
        "max_exact_players": Integer(1, 16, why="exact values score 2^M rows"),
        "permutations": Integer(2, even=True, why="antithetic pairs"),
        "placement": Choice(PLACEMENTS),
        "seed": Integer(-(2**63), 2**64 - 1, why="torch.Generator's range"),
    }

    def __init__(
        self,
        scorer: RewardScorer,
        unit: Unit = "token",
        max_exact_players: int = 10,
        permutations: int = 8,
        placement: Literal["last", "spread"] = "last",
        seed: int = 0,
    ) -> None:
        self.check_options(
            unit=unit,
            max_exact_players=max_exact_players,
            permutations=permutations,
            placement=placement,
            seed=seed,
        )
        super().__init__(scorer)
        self.unit, self.placement = unit, placement
        self.max_exact_players, self.permutations = max_exact_players, permutations
        self.generator = torch.Generator().manual_seed(seed)

    def players(self, batch: RolloutBatch, i: int) -> torch.Tensor:
        """(T_i,) the player of each token of response i."""
        if self.unit == "token":
            return torch.arange(int(batch.lengths[i]))
        _, text, spans = decode_spans(self.scorer.rm.tokenizer, batch.prompt(i), batch.response(i))
        return player_ids(text, spans, self.unit)

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
