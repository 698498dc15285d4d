"""Amortized Shapley credit: a network trained with the FastSHAP objective
(`shaping.explainer`) guesses each response's token Shapley values in one pass; a few RM rows
of the response itself refine the guess and keep training the network; audits against the
full Shapley method keep it honest.

Where a run can, it starts from an explainer trained once for its reward model
(`trainers.explainer`, a cached stage: `use_explainer`); otherwise the network starts
untrained and learns from the run's own rows alone.

Each response of a batch costs 1 + 2 `pairs` RM rows:

1. v(empty) (every token masked), which fixes the credits' sum: R - v(empty), as Shapley's;
2. `pairs` coalitions drawn from the Shapley kernel's distribution, each with its
   complement. Their values refine the network's guess: the credits that best fit them with
   the guess as a prior, summing to R - v(empty) (`shaping.explainer.refine`). They also
   train the network online (the policy, and so its responses, move away from the
   explainer's training set), a few gradient steps a PPO step over a replay buffer.

Every `audit_every` steps one response of the batch is also credited by the full Shapley
method (the teacher, with its own options); the relative L2 distance of the credits from
it, smoothed over audits, is the error the run reports. Above `target` a response gets one
more pair from the next step on (up to `max_pairs`), below half of it one fewer: rows are
spent where the network is not yet good enough. An audit's rows count in the run's cost.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from shaping.attribution.base import Attributor
from shaping.attribution.options import Choice, Integer, Options, Real
from shaping.attribution.shapley import ShapleyAttributor
from shaping.batch import RolloutBatch
from shaping.explainer import (
    CreditNet,
    efficient,
    fastshap_loss,
    kernel_coalitions,
    refine,
    relative_error,
    token_scalars,
)
from shaping.scorer import RewardScorer

Teacher = Literal["shapley"]
BUFFER = 512
"""Responses the network replays online: about 16 PPO steps of 32."""
UPDATES = 4
"""Online gradient steps a PPO step, of `MINIBATCH` buffered responses each."""
MINIBATCH = 32
SMOOTHING = 0.3
"""Weight of an audit's error in the running estimate."""


@dataclass(frozen=True)
class Inputs:
    """What the network reads of one response, and its own rows (for training)."""

    states: torch.Tensor
    """(T, H) the RM's last hidden states of the response tokens."""
    scalars: torch.Tensor
    """(T, SCALARS) `shaping.explainer.token_scalars`."""
    coalitions: torch.Tensor
    """(K, T) bool: the coalitions scored for this response (K may be 0)."""
    gains: torch.Tensor
    """(K,) v(S) - v(empty)."""
    total: float
    """R - v(empty)."""


def collate(
    items: list[Inputs],
) -> tuple[
    torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor
]:
    """Responses -> padded states (B, T, H), scalars (B, T, S), mask (B, T), coalitions
    (B, K, T), gains (B, K), weight (B, K) (0 on padding) and totals (B,)."""
    pad = torch.nn.utils.rnn.pad_sequence
    states = pad([x.states for x in items], batch_first=True)
    scalars = pad([x.scalars for x in items], batch_first=True)
    lengths = torch.tensor([x.states.shape[0] for x in items])
    T = states.shape[1]
    mask = torch.arange(T)[None, :] < lengths[:, None]
    K = max(x.coalitions.shape[0] for x in items)
    coalitions = torch.zeros(len(items), K, T, dtype=torch.bool)
    gains, weight = torch.zeros(len(items), K), torch.zeros(len(items), K)
    for b, x in enumerate(items):
        k, t = x.coalitions.shape
        coalitions[b, :k, :t], gains[b, :k], weight[b, :k] = x.coalitions, x.gains, 1.0
    totals = torch.tensor([x.total for x in items])
    return states, scalars, mask, coalitions, gains, weight, totals


class AmortizedAttributor(Attributor):
    name = "amortized"
    conserves = True  # to R - v(empty), as Shapley's: `refine` keeps the sum
    learns = True
    options: ClassVar[Options] = {
        "teacher": Choice(("shapley",)),
        "pairs": Integer(0, 64, why="coalition pairs a response gets at the start"),
        "max_pairs": Integer(0, 64, why="the most the audits may raise it to"),
        "audit_every": Integer(0, 10_000, why="PPO steps between audits; 0: never"),
        "target": Real(0.0, 10.0, why="relative L2 error the audits hold the credits to"),
        "prior": Real(1e-6, 1e6, why="weight of the network's guess against the rows"),
        "width": Integer(8, 1024, even=True, why="an untrained network's width"),
        "lr": Real(0.0, 1.0, why="the online Adam learning rate; 0: no online training"),
        "seed": Integer(-(2**63), 2**63 - 1, why="torch.manual_seed's range"),
    }

    def __init__(
        self,
        scorer: RewardScorer,
        teacher: Teacher = "shapley",
        pairs: int = 1,
        max_pairs: int = 8,
        audit_every: int = 4,
        target: float = 0.3,
        prior: float = 1.0,
        width: int = 128,
        lr: float = 1e-4,
        seed: int = 0,
    ) -> None:
        self.check_options(
            teacher=teacher,
            pairs=pairs,
            max_pairs=max_pairs,
            audit_every=audit_every,
            target=target,
            prior=prior,
            width=width,
            lr=lr,
            seed=seed,
        )
        if pairs > max_pairs:
            raise ValueError(f"amortized.pairs={pairs} is above amortized.max_pairs={max_pairs}")
        super().__init__(scorer)
        scorer.keep_states = True  # the inputs: kept from the pass that scores each batch
        self.teacher_seed = (seed + 1) % 2**32  # in the teacher's range; not our own stream
        self.teacher: Attributor = ShapleyAttributor(scorer, seed=self.teacher_seed)
        """The audits' method with its default options; `build_attributor` gives it the
        user's."""
        self.pairs, self.max_pairs, self.audit_every = pairs, max_pairs, audit_every
        self.target, self.prior, self.width, self.lr, self.seed = target, prior, width, lr, seed
        self.generator = torch.Generator().manual_seed(seed)
        self.net: CreditNet | None = None  # an explainer's, or built on the first batch
        self.pretrained = False
        self.optimizer: torch.optim.Optimizer | None = None
        self.buffer: list[Inputs] = []
        self.steps = 0
        self.audit_error: float | None = None
        """Smoothed relative L2 error against the teacher, over audits."""
        self.audits = 0

    def use_explainer(self, net: CreditNet) -> None:
        """Start from a network trained for this reward model (`trainers.explainer`)."""
        self.net, self.pretrained, self.optimizer = net, True, None

    # -- the credits ---------------------------------------------------------------------

    def _credits(self, batch: RolloutBatch) -> torch.Tensor:
        inputs = self.inputs(batch, 0 if self.frozen else self.pairs)
        if self.net is None:
            self._build(inputs[0].states.shape[-1])
        credits = self.credit(inputs, batch.response_ids.shape[1])
        if self.frozen:
            return credits
        self.steps += 1
        self.buffer = (self.buffer + inputs)[-BUFFER:]
        self._train()
        if self.audit_every and self.steps % self.audit_every == 0:
            self._audit(batch, credits)
        return credits

    def inputs(self, batch: RolloutBatch, pairs: int) -> list[Inputs]:
        """Each response's network inputs and rows: v(empty) and `pairs` coalition pairs
        (`batch` in the RM's tokens, scored by `scorer.score_responses`)."""
        states = self.scorer.response_states(batch)  # from the scoring pass
        prefixes = self.scorer.prefix_values(batch) if self.scorer.rm.causal else None
        drawn = [kernel_coalitions(int(T), pairs, self.generator) for T in batch.lengths]
        empty = [torch.zeros(1, int(T), dtype=torch.bool) for T in batch.lengths]
        values = self.scorer.coalition_values(
            batch, [torch.cat([e, d]) for e, d in zip(empty, drawn, strict=True)]
        )
        return [
            Inputs(
                states=states[i],
                scalars=token_scalars(None if prefixes is None else prefixes[i], int(T)),
                coalitions=drawn[i],
                gains=values[i][1:] - values[i][0],
                total=float(batch.scores[i] - values[i][0]),
            )
            for i, T in enumerate(batch.lengths)
        ]

    def credit(self, inputs: list[Inputs], width: int) -> torch.Tensor:
        """The network's guesses, refined by each response's rows: (B, width). Learns
        nothing (`attribute` trains after it)."""
        states, scalars, mask, _, _, _, totals = collate(inputs)
        assert self.net is not None
        with torch.no_grad():
            guess = efficient(self.net(states, scalars, mask), totals, mask)
        credits = torch.zeros(len(inputs), width)
        for i, x in enumerate(inputs):
            T = x.states.shape[0]
            credits[i, :T] = refine(guess[i, :T], x.coalitions, x.gains, x.total, self.prior)
        return credits

    def _audit(self, batch: RolloutBatch, credits: torch.Tensor) -> None:
        """One response against the teacher; more pairs if the error is above target."""
        i = int(torch.randint(batch.size, (1,), generator=self.generator))
        truth = self.teacher.rm_credits(batch.select([i]))[0]
        error = relative_error(credits[i], truth)
        a = self.audit_error
        self.audit_error = error if a is None else (1 - SMOOTHING) * a + SMOOTHING * error
        self.audits += 1
        if self.audit_error > self.target:
            self.pairs = min(self.pairs + 1, self.max_pairs)
        elif self.audit_error < self.target / 2:
            self.pairs = max(self.pairs - 1, 0)

    # -- the network ---------------------------------------------------------------------

    def _build(self, hidden: int) -> None:
        with torch.random.fork_rng():  # the run's RNG stays untouched: seeded from ours
            torch.manual_seed(self.seed)
            self.net = CreditNet(hidden, self.width)

    def _train(self) -> None:
        """A few FastSHAP steps on the buffered responses' own rows."""
        assert self.net is not None
        if self.lr == 0 or not any(x.coalitions.shape[0] for x in self.buffer):
            return
        if self.optimizer is None:
            self.optimizer = torch.optim.Adam(self.net.parameters(), lr=self.lr)
        with torch.enable_grad():  # `attribute` runs under no_grad
            for _ in range(UPDATES):
                picks = torch.randint(len(self.buffer), (MINIBATCH,), generator=self.generator)
                states, scalars, mask, coalitions, gains, weight, totals = collate(
                    [self.buffer[k] for k in picks.tolist()]
                )
                credits = efficient(self.net(states, scalars, mask), totals, mask)
                loss = fastshap_loss(credits, coalitions, gains, weight)
                self.optimizer.zero_grad()
                loss.backward()
                self.optimizer.step()

    # -- reporting and checkpoints -------------------------------------------------------

    def metrics(self) -> dict[str, float]:
        out = super().metrics()
        out |= {
            "shaping/amortized_pairs": float(self.pairs),
            "shaping/amortized_pretrained": float(self.pretrained),
            "shaping/amortized_audits": float(self.audits),
        }
        if self.audit_error is not None:
            out["shaping/amortized_audit_error"] = self.audit_error
        return out

    def state(self) -> dict[str, Any]:
        fields = ("states", "scalars", "coalitions", "gains")
        return {
            **super().state(),
            "teacher": self.teacher.state(),
            "sizes": None if self.net is None else self.net.sizes(),
            "net": None if self.net is None else self.net.state_dict(),
            "optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
            "buffer": {f: [getattr(x, f) for x in self.buffer] for f in fields}
            | {"totals": [x.total for x in self.buffer]},
            "progress": [self.steps, self.pairs, self.audit_error, self.audits],
            "pretrained": self.pretrained,
        }

    def load_state(self, state: Mapping[str, Any]) -> None:
        super().load_state(state)
        self.teacher.load_state(state["teacher"])
        if state["net"] is not None:
            self.net = CreditNet.restore(state["sizes"], state["net"])
            self.optimizer = None
            if state["optimizer"] is not None:
                self.optimizer = torch.optim.Adam(self.net.parameters(), lr=self.lr)
                self.optimizer.load_state_dict(state["optimizer"])
        b = state["buffer"]
        self.buffer = [
            Inputs(states=s, scalars=c, coalitions=z, gains=g, total=t)
            for s, c, z, g, t in zip(
                b["states"], b["scalars"], b["coalitions"], b["gains"], b["totals"], strict=True
            )
        ]
        self.steps, self.pairs, self.audit_error, self.audits = state["progress"]
        self.pretrained = bool(state["pretrained"])
