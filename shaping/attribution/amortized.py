"""Amortized credit: a small network, trained online during PPO, that predicts a teacher
method's per-token credits (Shapley, SHAP or LIME) from the reward model's hidden states.

FastSHAP (Jethani et al. 2022) trains an explainer to give Shapley values in one pass, and
stochastic amortization (Covert et al. 2024) shows that noisy, unbiased labels, such as a
few sampled permutations, are enough: the network averages their noise out over many
responses. Here the labels come from the teacher run on a random `label_fraction` of each
PPO batch, and the inputs are the RM's last hidden states of the response tokens, kept from
the pass that scored the batch (no RM pass of their own). A Shapley value depends on the
tokens that come after it, so the network reads the whole response: one bidirectional GRU
layer over the states.

Each step:

1. the teacher labels `label_fraction` of the batch (at least one response); every
   `PROBE_EVERY` steps, and every step while falling back, one of them twice: the two labels
   differ by the teacher's own sampling noise, sigma^2 per token (0 for an exact teacher);
2. the network's squared error on these fresh labels, before it trains on them, is its
   error against the true credits plus sigma^2 (unbiased labels, independent of it), so its
   own error is estimated as the difference (both smoothed over steps);
3. until that estimate is below sigma^2, the network is worse than one teacher label, and
   the teacher labels the whole batch instead (fallback); `error_ratio` trades accuracy for
   cost: the network takes over once its RMS error is below `error_ratio` times the
   teacher's (1, the default: only once it is at least as good as one label);
4. the network trains on a replay buffer of the most recent labels;
5. a labelled response gets the teacher's credits; any other the network's, made to sum to
   R - v(empty) as the teacher's do, by FastSHAP's additive efficiency correction (the
   residual spread evenly over the response's tokens; its size before correction is
   reported). v(empty), the response with every token masked, is one RM row.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from shaping.attribution.base import Attributor
from shaping.attribution.lime_explainer import LimeAttributor
from shaping.attribution.options import Choice, Integer, Options, Real
from shaping.attribution.shap_explainer import ShapAttributor
from shaping.attribution.shapley import ShapleyAttributor
from shaping.batch import RolloutBatch
from shaping.scorer import RewardScorer

Teacher = Literal["shapley", "shap", "lime"]
TEACHERS = ("shapley", "shap", "lime")
TEACHER_METHODS: dict[str, type[ShapleyAttributor | ShapAttributor | LimeAttributor]] = {
    "shapley": ShapleyAttributor,
    "shap": ShapAttributor,
    "lime": LimeAttributor,
}
BUFFER = 512
"""Labelled responses the network replays: about 16 steps of labels at the default
fraction, or the last fallback step or two (the policy, and so the responses, drift)."""
UPDATES = 16
"""Gradient steps a PPO step, of `MINIBATCH` buffered responses each. On the built-in RM
(bench/amortized_bench.py's learning curve), 16 at width 128 reach about the error 32 do
after 448 labels, at half the time (~0.3 s a PPO step on one core)."""
MINIBATCH = 32
PROBE_EVERY = 4
"""Steps between measurements of the teacher's noise once the network is in use."""
SMOOTHING = 0.3
"""Weight of a step's error in the running estimates."""


class CreditNet(torch.nn.Module):
    """RM hidden states (B, T, H) -> credits (B, T): a projection, one bidirectional GRU
    layer (a token's credit depends on the tokens after it, too), and a linear read-out of
    both (the projection alone carries an additive game)."""

    def __init__(self, features: int, width: int) -> None:
        super().__init__()
        self.norm = torch.nn.LayerNorm(features, elementwise_affine=False)
        self.project = torch.nn.Linear(features, width)
        self.context = torch.nn.GRU(width, width // 2, batch_first=True, bidirectional=True)
        self.read = torch.nn.Linear(width + 2 * (width // 2), 1)

    def forward(self, states: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        T = states.shape[1]
        x = torch.tanh(self.project(self.norm(states)))  # (B, T, W)
        # Packed: the backward direction starts at each response's last token, not padding.
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        context, _ = pad_packed_sequence(self.context(packed)[0], batch_first=True, total_length=T)
        mask = torch.arange(T)[None, :] < lengths[:, None]
        return self.read(torch.cat([x, context], dim=-1)).squeeze(-1) * mask  # (B, T)


def pad_states(states: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-response (T_i, H) -> right-padded (B, T, H) and lengths (B,)."""
    lengths = torch.tensor([s.shape[0] for s in states])
    return torch.nn.utils.rnn.pad_sequence(states, batch_first=True), lengths


def efficiency_correction(
    credits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """FastSHAP's additive efficiency correction: each row of `credits` (B, T) plus its
    residual `target - sum` (B,) spread evenly over its tokens; also the residual."""
    residual = target - credits.sum(dim=1)
    return credits + residual[:, None] * mask / mask.sum(dim=1, keepdim=True), residual


class AmortizedAttributor(Attributor):
    name = "amortized"
    conserves = True  # to R - v(empty), as its teachers: see step 5 above
    learns = True
    options: ClassVar[Options] = {
        "teacher": Choice(TEACHERS),
        "label_fraction": Real(0.0, 1.0, why="share of each batch the teacher labels"),
        "width": Integer(4, 1024, even=True, why="the network's hidden width"),
        "lr": Real(1e-6, 1.0, why="the network's Adam learning rate"),
        "error_ratio": Real(
            0.0, 1000.0, why="network RMS error allowed, in units of the teacher's"
        ),
        "seed": Integer(-(2**63), 2**63 - 1, why="torch.manual_seed's range"),
    }

    def __init__(
        self,
        scorer: RewardScorer,
        teacher: Teacher = "shapley",
        label_fraction: float = 0.1,
        width: int = 128,
        lr: float = 3e-3,
        error_ratio: float = 1.0,
        seed: int = 0,
    ) -> None:
        self.check_options(
            teacher=teacher,
            label_fraction=label_fraction,
            width=width,
            lr=lr,
            error_ratio=error_ratio,
            seed=seed,
        )
        if label_fraction <= 0:
            raise ValueError("amortized.label_fraction must be > 0: the network learns from labels")
        super().__init__(scorer)
        scorer.keep_states = True  # the inputs: kept from the pass that scores each batch
        self.teacher_seed = (seed + 1) % 2**32  # in every teacher's range; not our own stream
        self.teacher: Attributor = TEACHER_METHODS[teacher](scorer, seed=self.teacher_seed)
        """The teacher with its default options; `build_attributor` gives it the user's."""
        self.label_fraction, self.width, self.lr, self.seed = label_fraction, width, lr, seed
        self.error_ratio = error_ratio
        self.generator = torch.Generator().manual_seed(seed)
        self.net: CreditNet | None = None  # built on the first batch, when H is known
        self.optimizer: torch.optim.Optimizer | None = None
        self.buffer: list[tuple[torch.Tensor, torch.Tensor]] = []
        """(states (T, H), credits (T,)) of the most recent labelled responses."""
        self.steps = 0
        self.net_error: float | None = None
        """Smoothed estimate of the network's squared error per token, against the truth."""
        self.fresh_error: float | None = None
        """Smoothed squared error per token against fresh labels (net error + sigma^2)."""
        self.teacher_error: float | None = None
        """Smoothed sigma^2: the teacher's sampling variance per token."""
        self.fallback = True
        self.measured = False
        """Whether a network's error was measured yet (not only that of crediting nothing)."""
        self.labelled = 0.0

    # -- the credits ---------------------------------------------------------------------

    def _credits(self, batch: RolloutBatch) -> torch.Tensor:
        states = self.scorer.response_states(batch)  # from the scoring pass
        if self.frozen and self.net is not None:
            return self._predict(batch, states, list(range(batch.size)))
        self.steps += 1
        labelled = self._pick(batch.size)
        credits = torch.zeros(batch.response_ids.shape)
        labels = self._label(batch, labelled, states)  # also updates the error estimates
        self.fallback = not self._learned()
        rest = sorted(set(range(batch.size)) - set(labelled))
        if self.fallback and rest:  # the whole batch from the teacher
            more = self.teacher.rm_credits(batch.select(rest))
            self._remember(batch, rest, more, states)
            labelled, labels, rest = labelled + rest, torch.cat([labels, more]), []
        credits[labelled] = labels
        if rest:  # the network's
            credits[rest] = self._predict(batch.select(rest), states, rest)
        self._train()
        self.labelled = len(labelled) / batch.size
        return credits

    def _pick(self, B: int) -> list[int]:
        """The responses the teacher labels this step."""
        n = min(B, max(1, round(self.label_fraction * B)))
        return torch.randperm(B, generator=self.generator)[:n].tolist()

    def _label(
        self, batch: RolloutBatch, rows: list[int], states: list[torch.Tensor]
    ) -> torch.Tensor:
        """The teacher's credits of `rows` (n, T); measures the network against them before
        it sees them, and the teacher against itself on a probe."""
        labels = self.teacher.rm_credits(batch.select(rows))
        mask = batch.response_mask[rows].float()
        # Before it exists the network's error is that of crediting nothing, as an
        # untrained one does about.
        guess = (
            torch.zeros_like(labels)
            if self.net is None
            else self._forward([states[i] for i in rows], labels.shape[1])
        )
        self.fresh_error = smooth(self.fresh_error, mean_square(guess - labels, mask))
        self.measured = self.measured or self.net is not None
        if self.fallback or self.steps % PROBE_EVERY == 1:
            again = self.teacher.rm_credits(batch.select(rows[:1]))  # independent draw
            noise = mean_square(again - labels[:1], mask[:1]) / 2  # Var(a - b) = 2 sigma^2
            self.teacher_error = smooth(self.teacher_error, noise)
            labels[0] = (labels[0] + again[0]) / 2  # twice the teacher: a better label
        if self.teacher_error is not None:
            self.net_error = max(self.fresh_error - self.teacher_error, 0.0)
        self._remember(batch, rows, labels, states)
        return labels

    def _learned(self) -> bool:
        """True once the network's estimated error is below one teacher label's (times
        `error_ratio`)."""
        if not self.measured or self.net_error is None or self.teacher_error is None:
            return False  # no network measured yet: crediting nothing is no network
        return self.net_error < self.error_ratio**2 * self.teacher_error

    def _predict(
        self, batch: RolloutBatch, states: list[torch.Tensor], rows: list[int]
    ) -> torch.Tensor:
        """The network's credits for `batch` (the responses `rows` of the step's batch),
        corrected to sum to R - v(empty)."""
        guess = self._forward([states[i] for i in rows], batch.response_ids.shape[1])
        empty = [torch.zeros(1, int(n), dtype=torch.bool) for n in batch.lengths]
        target = batch.scores - torch.cat(self.scorer.coalition_values(batch, empty))
        mask = batch.response_mask.float()
        credits, residual = efficiency_correction(guess * mask, target, mask)
        self.residuals.append(float((residual.abs() / (batch.scores.abs() + 1e-8)).mean()))
        return credits

    # -- the network ---------------------------------------------------------------------

    def _forward(self, states: list[torch.Tensor], T: int) -> torch.Tensor:
        """The network's raw credits (n, T) for responses with these states."""
        assert self.net is not None
        padded, lengths = pad_states(states)
        with torch.no_grad():
            out = self.net(padded, lengths)
        return torch.nn.functional.pad(out, (0, T - out.shape[1]))

    def _remember(
        self,
        batch: RolloutBatch,
        rows: list[int],
        labels: torch.Tensor,
        states: list[torch.Tensor],
    ) -> None:
        for j, i in enumerate(rows):
            T = int(batch.lengths[i])
            self.buffer.append((states[i], labels[j, :T].clone()))
        del self.buffer[:-BUFFER]
        if self.net is None:
            self._build(states[0].shape[-1])

    def _build(self, features: int) -> None:
        with torch.random.fork_rng():  # the run's RNG stays untouched: seeded from ours
            torch.manual_seed(self.seed)
            self.net = CreditNet(features, self.width)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=self.lr)

    def _train(self) -> None:
        assert self.net is not None and self.optimizer is not None
        with torch.enable_grad():  # `attribute` runs under no_grad
            for _ in range(UPDATES):
                picks = torch.randint(len(self.buffer), (MINIBATCH,), generator=self.generator)
                states, targets = zip(*(self.buffer[k] for k in picks.tolist()), strict=True)
                padded, lengths = pad_states(list(states))
                target = torch.nn.utils.rnn.pad_sequence(list(targets), batch_first=True)
                mask = (torch.arange(target.shape[1])[None, :] < lengths[:, None]).float()
                loss = mean_square(self.net(padded, lengths) - target, mask)
                self.optimizer.zero_grad()
                loss.backward()
                self.optimizer.step()

    # -- reporting and checkpoints -------------------------------------------------------

    def metrics(self) -> dict[str, float]:
        out = super().metrics()
        out |= {  # root mean squares per token, in reward units
            "shaping/amortized_error": math.sqrt(self.net_error or 0.0),
            "shaping/amortized_teacher_error": math.sqrt(self.teacher_error or 0.0),
            "shaping/amortized_fallback": float(self.fallback),
            "shaping/amortized_labelled": self.labelled,
        }
        return out

    def state(self) -> dict[str, Any]:
        return {
            **super().state(),
            "teacher": self.teacher.state(),
            "net": None if self.net is None else self.net.state_dict(),
            "features": None if self.net is None else self.net.project.in_features,
            "optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
            "buffer_states": [s for s, _ in self.buffer],
            "buffer_credits": [c for _, c in self.buffer],
            "progress": [self.steps, self.net_error, self.fresh_error, self.teacher_error],
            "fallback": self.fallback,
            "measured": self.measured,
        }

    def load_state(self, state: Mapping[str, Any]) -> None:
        super().load_state(state)
        self.teacher.load_state(state["teacher"])
        if state["net"] is not None:
            self._build(int(state["features"]))
            assert self.net is not None and self.optimizer is not None
            self.net.load_state_dict(state["net"])
            self.optimizer.load_state_dict(state["optimizer"])
        self.buffer = list(zip(state["buffer_states"], state["buffer_credits"], strict=True))
        self.steps, self.net_error, self.fresh_error, self.teacher_error = state["progress"]
        self.fallback, self.measured = bool(state["fallback"]), bool(state["measured"])


def mean_square(error: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of error^2 over the tokens in `mask` (rows of any length)."""
    return (error.square() * mask).sum() / mask.sum().clamp_min(1)


def smooth(previous: float | None, value: torch.Tensor) -> float:
    return (
        float(value) if previous is None else (1 - SMOOTHING) * previous + SMOOTHING * float(value)
    )
