"""RewardScorer: the one place that runs the reward model on variants of responses.

Attribution methods ask for the values of coalitions (which response tokens are kept, the
rest replaced by the RM's mask token) or of prefixes. The scorer evaluates each distinct
row once per response, packs rows from many responses into forwards of `rows_per_forward`
rows (sorted by length, so padding stays small), and counts rows and time in the model.

Batches arrive in the policy's tokens. When the RM has a tokenizer of its own, `view`
re-tokenises a batch for it and maps credits back (see `shaping.align`).

Every value handed out is checked: a NaN or inf from the RM raises `NonFiniteRewardError`
rather than turning into credits (and from there into the policy's gradient).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from shaping.align import RmView, retokenize
from shaping.batch import RolloutBatch
from shaping.reward_model import HasStates, NoStatesError, RewardModel, gives_states


class NonFiniteRewardError(ValueError):
    """The reward model gave NaN or inf for one response: the response (its index in the
    batch and the start of its text), the row of it that was scored, and the method that
    asked (None until the attributor adds its name; "score" for the plain score R)."""

    def __init__(
        self, response: int, text: str, value: float, row: str, method: str | None = None
    ) -> None:
        self.response = response
        self.text = text
        """The start of the response's text."""
        self.value = value
        self.row = row
        """Which row of the response was scored: its full text, a masked variant, a prefix."""
        self.method = method
        super().__init__(response, text, value, row, method)  # args: how an error pickles

    def __str__(self) -> str:
        asked = f", asked for by method {self.method!r}" if self.method else ""
        return (
            f"the reward model returned {self.value} for response {self.response} "
            f"({self.text!r}; {self.row}){asked}. Find why it is not finite on this text "
            "(fp16 overflow, an input longer than the RM was trained on, ...) or drop the response"
        )

    def asked_by(self, method: str) -> NonFiniteRewardError:
        """The same error, naming the method that asked for the row."""
        return NonFiniteRewardError(self.response, self.text, self.value, self.row, method)


def first_non_finite(values: torch.Tensor) -> int | None:
    """The index of the first NaN or inf in `values` (1-d), or None."""
    bad = (~torch.isfinite(values)).nonzero()
    return int(bad[0, 0]) if len(bad) else None


@dataclass
class ScorerStats:
    requested_rows: int = 0
    """Rows attribution asked for, duplicates included."""
    rows: int = 0
    """Rows the RM evaluated."""
    forwards: int = 0
    model_seconds: float = 0.0
    """Wall time inside the RM's forward passes."""

    def as_metrics(self) -> dict[str, float]:
        return {
            "cost/rm_rows": float(self.rows),
            "cost/rm_rows_requested": float(self.requested_rows),
            "cost/rm_forwards": float(self.forwards),
            "cost/rm_seconds": self.model_seconds,
        }


class RewardScorer:
    """`policy_tokenizer`: the tokenizer of the batches' ids; None (or one with the RM's
    vocabulary) means the RM reads the policy's ids as they are."""

    def __init__(
        self,
        rm: RewardModel,
        rows_per_forward: int = 256,
        policy_tokenizer: PreTrainedTokenizerBase | None = None,
        coalition_rm: RewardModel | None = None,
    ) -> None:
        if rows_per_forward < 1:
            raise ValueError(f"rows_per_forward={rows_per_forward} must be >= 1")
        self.rm = rm
        self.coalition_rm = coalition_rm or rm
        """What scores the masked variants of `coalition_values` (Shapley, SHAP, LIME, the
        amortized teacher): the RM, or a cheaper copy of it (bfloat16). The responses' own
        scores, prefixes, states and attentions always come from the RM itself."""
        self.rows_per_forward = rows_per_forward
        self.stats = ScorerStats()
        self._prefixes: dict[tuple[int, ...], torch.Tensor] = {}
        """Every prefix score of the rows `score_responses` scored last (causal RMs), for
        `prefix_values`: one RM row per response serves R and RED."""
        self.keep_states = False
        """Whether `score_responses` keeps the RM's hidden states, set by a method that reads
        them (`amortized`): copying every state off the RM on every scoring pass is work the
        other methods should not pay for."""
        self._states: dict[tuple[int, ...], torch.Tensor] = {}
        """The RM's last hidden states (len, H) of the rows `score_responses` scored last,
        with `keep_states` and an RM that gives them (`HasStates`), for `response_states`."""
        self._pad_id = rm.tokenizer.pad_token_id if rm.tokenizer.pad_token_id is not None else 0
        self.policy_tokenizer = (
            None
            if policy_tokenizer is None or policy_tokenizer.get_vocab() == rm.tokenizer.get_vocab()
            else policy_tokenizer
        )

    def view(self, batch: RolloutBatch) -> RmView:
        """The batch in the RM's tokens (itself when the RM reads the policy's ids)."""
        if self.policy_tokenizer is None:
            return RmView(batch)
        return retokenize(batch, self.policy_tokenizer, self.rm.tokenizer, self._pad_id)

    def score_responses(
        self, prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]]
    ) -> torch.Tensor:
        """R = r(x, y) for policy-token prompts and responses: (B,)."""
        if self.policy_tokenizer is None:
            rows = [[*p, *r] for p, r in zip(prompts, responses, strict=True)]
        else:
            decode = self.policy_tokenizer.decode
            # The same text `view` re-tokenises: prompt and response decoded together.
            texts = [
                str(decode([*p, *r], skip_special_tokens=True))
                for p, r in zip(prompts, responses, strict=True)
            ]
            rows = self.rm.tokenizer(texts, add_special_tokens=True)["input_ids"]
        self.stats.requested_rows += len(rows)
        self._prefixes.clear()  # the previous batch's: of no use from here on
        self._states.clear()
        # The same forward pass as a plain score (a causal RM scores at the last token): R
        # is the last prefix score, and the others wait for `prefix_values`; the hidden
        # states, for `response_states`.
        if self.keep_states:
            per_row, states = self._score_with_states(rows, prefixes=self.rm.causal)
            self._states.update((tuple(r), h) for r, h in zip(rows, states, strict=False))
        else:
            per_row = self.score_rows(rows, prefixes=self.rm.causal)
        if not self.rm.causal:
            scores = torch.stack(per_row)
        else:
            self._prefixes.update((tuple(r), v) for r, v in zip(rows, per_row, strict=True))
            scores = torch.stack([v[-1] for v in per_row])
        if (i := first_non_finite(scores)) is not None:
            error = self._non_finite(i, responses[i], scores[i], "its score R", policy=True)
            raise error.asked_by("score")
        return scores

    def check_scores(self, batch: RolloutBatch) -> None:
        """Refuse a batch whose scores R, which come from outside, hold NaN or inf: every
        method builds its credits from them."""
        if (i := first_non_finite(batch.scores)) is not None:
            row = "the batch's score R"
            raise self._non_finite(i, batch.response(i), batch.scores[i], row, policy=True)

    def _non_finite(
        self, i: int, response: Sequence[int], value: torch.Tensor, row: str, policy: bool = False
    ) -> NonFiniteRewardError:
        """The error for response i, its ids `response` in the RM's tokens (the policy's with
        `policy`) shown as the start of their text."""
        tokenizer = (self.policy_tokenizer if policy else None) or self.rm.tokenizer
        text = str(tokenizer.decode(list(response), skip_special_tokens=True))
        short = text if len(text) <= 40 else text[:37] + "..."
        return NonFiniteRewardError(i, short, float(value), row)

    @torch.no_grad()
    def score_rows(
        self, rows: Sequence[Sequence[int]], prefixes: bool = False
    ) -> list[torch.Tensor]:
        """Score token rows; each result is a 0-d tensor, or with `prefixes` the (len,) scores
        of every prefix of the row (causal RMs only). The raw RM outputs, unchecked: these rows
        are no response of a batch, so the response-level methods check what they hand out."""
        if not rows:
            return []
        ids, lengths = self._pad(rows)
        scores, _ = self._forward_packed(ids, lengths, prefixes)  # (N,) or (N, width)
        if prefixes:
            return [scores[j, : len(r)] for j, r in enumerate(rows)]
        return list(scores.unbind())

    def _score_with_states(
        self, rows: Sequence[Sequence[int]], prefixes: bool
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """`score_rows`, and each row's hidden states (len, H) when the RM gives them (none
        otherwise: `response_states` then says why it cannot run)."""
        if not gives_states(self.rm):
            return self.score_rows(rows, prefixes), []
        ids, lengths = self._pad(rows)
        scores, states = self._forward_packed(ids, lengths, prefixes, states=True)
        assert states is not None
        per_row = [scores[j, : len(r)] if prefixes else scores[j] for j, r in enumerate(rows)]
        return per_row, [states[j, : len(r)] for j, r in enumerate(rows)]

    @torch.no_grad()
    def _forward_packed(
        self,
        ids: torch.Tensor,
        lengths: torch.Tensor,
        prefixes: bool = False,
        states: bool = False,
        rm: RewardModel | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Score right-padded rows (N, width) of the given lengths (N,): (N,), or with
        `prefixes` (N, width); with `states` also the hidden states (N, width, H) from the same
        pass. Rows go through the RM (or `rm`) `rows_per_forward` at a time, shortest first,
        each chunk cut to its longest row so padding stays small."""
        model = rm or self.rm
        N, width = ids.shape
        out = torch.zeros((N, width) if prefixes else (N,))
        hidden: torch.Tensor | None = None
        order = torch.argsort(lengths, stable=True)  # stable: equal rows keep their order
        for chunk in order.split(self.rows_per_forward):
            n = int(lengths[chunk].max())
            chunk_ids = ids[chunk, :n]  # (R, n)
            mask = (torch.arange(n) < lengths[chunk, None]).long()  # (R, n)
            started = time.perf_counter()
            if states:
                assert isinstance(self.rm, HasStates)
                scores, chunk_states = self.rm.scores_and_states(chunk_ids, mask)
                if hidden is None:
                    hidden = torch.zeros(N, width, chunk_states.shape[-1])
                hidden[chunk, :n] = chunk_states.float().cpu()
            elif prefixes:
                scores = model.prefix_scores(chunk_ids, mask)
            else:
                scores = model.scores(chunk_ids, mask)
            self.stats.model_seconds += time.perf_counter() - started
            self.stats.forwards += 1
            self.stats.rows += len(chunk)
            if prefixes:
                out[chunk, :n] = scores.float().cpu()
            else:
                out[chunk] = scores.float().cpu()
        return out, hidden

    def response_states(self, batch: RolloutBatch) -> list[torch.Tensor]:
        """The RM's last hidden states of each response's tokens: (T_i, H) per response, in
        the RM's tokens. Read from the pass `score_responses` made; a response it did not
        score costs one row (its full row, scored again)."""
        if not gives_states(self.rm):
            raise NoStatesError(self.rm)
        rows = [batch.prompt(i) + batch.response(i) for i in range(batch.size)]
        self.stats.requested_rows += len(rows)
        missing = [r for r in rows if tuple(r) not in self._states]
        known = dict(self._states)
        if missing:
            _, states = self._score_with_states(missing, prefixes=self.rm.causal)
            known.update((tuple(r), h) for r, h in zip(missing, states, strict=True))
        return [known[tuple(r)][len(batch.prompt(i)) :] for i, r in enumerate(rows)]

    def coalition_values(
        self, batch: RolloutBatch, coalitions: Sequence[torch.Tensor]
    ) -> list[torch.Tensor]:
        """Values v(S) = r(x, y_S) for response i's coalitions (K_i, T_i) bool -> (K_i,).

        Duplicate coalitions of a response are evaluated once; the full coalition is the
        score already in the batch and costs no row. The masked rows of all responses are
        built as tensors (one `torch.where` per response) and scored together.
        """
        blocks, plan = [], []  # per response: its rows (K', P + T) and how to read them back
        for i, keep in enumerate(coalitions):
            T = int(batch.lengths[i])
            if keep.ndim != 2 or keep.shape[1] != T:
                raise ValueError(
                    f"coalitions of response {i} must be (K, {T}); got {tuple(keep.shape)}"
                )
            self.stats.requested_rows += keep.shape[0]
            unique, inverse = torch.unique(keep.bool(), dim=0, return_inverse=True)  # (K', T)
            full = unique.all(dim=1)  # (K',)
            prompt = batch.prompt_ids[i][batch.prompt_mask[i].bool()]  # (P_i,)
            masked = torch.where(unique[~full], batch.response_ids[i, :T], self.rm.mask_token_id)
            blocks.append(torch.cat([prompt.expand(masked.shape[0], -1), masked], dim=1))
            plan.append((unique, full, inverse))
        scores = self._score_blocks(blocks)
        values = []
        for i, ((unique, full, inverse), block_scores) in enumerate(zip(plan, scores, strict=True)):
            if (j := first_non_finite(block_scores)) is not None:
                dropped = int((~unique[~full][j]).sum())
                row = f"a variant with {dropped} of its {unique.shape[1]} tokens masked"
                raise self._non_finite(i, batch.response(i), block_scores[j], row)
            v = torch.empty(full.shape[0])  # (K',)
            v[full] = batch.scores[i]
            v[~full] = block_scores
            values.append(v[inverse])
        return values

    def _score_blocks(self, blocks: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Scores of several blocks of equal-length rows (K_i, L_i), packed into shared
        forwards: (K_i,) per block."""
        sizes = [b.shape[0] for b in blocks]
        if sum(sizes) == 0:
            return [torch.empty(0) for _ in blocks]
        width = max(b.shape[1] for b in blocks)
        ids = torch.cat(
            [
                torch.nn.functional.pad(b, (0, width - b.shape[1]), value=self._pad_id)
                for b in blocks
            ]
        )  # (sum K_i, width)
        lengths = torch.cat(
            [torch.full((k,), b.shape[1]) for k, b in zip(sizes, blocks, strict=True)]
        )
        return list(self._forward_packed(ids, lengths, rm=self.coalition_rm)[0].split(sizes))

    @torch.no_grad()
    def attention_values(self, batch: RolloutBatch) -> list[torch.Tensor]:
        """The RM's attention from its scoring position to each response token: (T_i,) per
        response, one row each, packed like any other rows."""
        rows = [batch.prompt(i) + batch.response(i) for i in range(batch.size)]
        self.stats.requested_rows += len(rows)
        out: list[torch.Tensor] = []
        for start in range(0, len(rows), self.rows_per_forward):
            chunk = rows[start : start + self.rows_per_forward]
            ids, lengths = self._pad(chunk)
            mask = (torch.arange(ids.shape[1]) < lengths[:, None]).long()
            started = time.perf_counter()
            attention = self.rm.attentions(ids, mask).float().cpu()  # (n, width)
            self.stats.model_seconds += time.perf_counter() - started
            self.stats.forwards += 1
            self.stats.rows += len(chunk)
            for j, i in enumerate(range(start, start + len(chunk))):
                P = len(batch.prompt(i))
                weights = attention[j, P : len(rows[i])]  # (T_i,)
                if (k := first_non_finite(weights)) is not None:
                    row = "its attention weights"
                    raise self._non_finite(i, batch.response(i), weights[k], row)
                out.append(weights)
        return out

    def _pad(self, rows: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token rows -> right-padded ids (N, width) and lengths (N,)."""
        lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
        ids = torch.full((len(rows), int(lengths.max())), self._pad_id, dtype=torch.long)
        for j, r in enumerate(rows):
            ids[j, : len(r)] = torch.as_tensor(r, dtype=torch.long)
        return ids, lengths

    def prefix_values(self, batch: RolloutBatch) -> list[torch.Tensor]:
        """r(x, y_<t) for t = 0..T_i: (T_i + 1,) per response; entry 0 scores the prompt alone
        and entry T_i, the full row, is the batch's score R (as in `coalition_values`).

        A causal RM reads all of them from one forward pass of the full row; any other RM
        scores each prefix but the full one as its own row: T_i rows per response.
        """
        if self.rm.causal:
            rows = [batch.prompt(i) + batch.response(i) for i in range(batch.size)]
            self.stats.requested_rows += len(rows)
            known = dict(self._prefixes)  # kept by `score_responses`: no second pass
            missing = [r for r in rows if tuple(r) not in known]
            scored = self.score_rows(missing, prefixes=True)
            known.update((tuple(r), v) for r, v in zip(missing, scored, strict=True))
            # The prefix ending at the prompt's last token is t = 0; the full row's is left out.
            prefixes = [
                known[tuple(rows[i])][len(batch.prompt(i)) - 1 : -1] for i in range(batch.size)
            ]
        else:
            rows, starts = [], []
            for i in range(batch.size):
                prompt, response = batch.prompt(i), batch.response(i)
                starts.append(len(rows))
                rows += [prompt + response[:t] for t in range(len(response))]
            self.stats.requested_rows += len(rows) + batch.size  # + the full rows, which are R
            scores = self.score_rows(rows)
            prefixes = [
                torch.stack(scores[s : s + n])
                for s, n in zip(starts, batch.lengths.tolist(), strict=True)
            ]
        out = []
        for i, scored_prefixes in enumerate(prefixes):  # (T_i,) for t = 0..T_i - 1
            if (t := first_non_finite(scored_prefixes)) is not None:
                row = f"its prefix of {t} tokens"
                raise self._non_finite(i, batch.response(i), scored_prefixes[t], row)
            out.append(torch.cat([scored_prefixes, batch.scores[i : i + 1].float()]))
        return out
