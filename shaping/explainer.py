"""A credit network trained with the FastSHAP objective, and the maths around it.

FastSHAP (Jethani et al., ICLR 2022) trains a network phi(x) to give Shapley values in one
pass by minimising, over coalitions S drawn from the Shapley kernel's distribution,

    E_S [ (v(S) - v(empty) - sum_{t in S} phi_t)^2 ],    phi made to sum to v(N) - v(empty)

whose minimiser for each response is its exact Shapley values (KernelSHAP's regression).
Every reward-model row v(S) is a training signal: no teacher runs hundreds of rows to make
one label. The same objective, with the network's guess as a prior, refines the credits of
one response from a few of its own rows (`refine`).

What the network reads, per response token: the reward model's last hidden state from the
pass that scored the response, the change in the RM's prefix score the token made
(causal RMs score every prefix in that pass: RED's credit, a strong first guess), what the
rest of the response added after it, and its position. A Shapley value depends on the
tokens after it too, so a small bidirectional transformer reads the whole response.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

SCALARS = 4
"""Per-token numbers beside the hidden state: prefix-score change, score still to come,
relative position, 1/sqrt(length)."""


def token_scalars(prefix: torch.Tensor | None, T: int) -> torch.Tensor:
    """(T, SCALARS) for a response of T tokens; `prefix` is r(x, y_<t) for t = 0..T (T + 1,)
    from a causal RM, or None (then the score features are zero)."""
    position = (torch.arange(T, dtype=torch.float32) + 1) / T
    out = torch.zeros(T, SCALARS)
    if prefix is not None:
        out[:, 0] = prefix[1:] - prefix[:-1]  # what token t added to the prefix score
        out[:, 1] = prefix[-1] - prefix[1:]  # what came after it
    out[:, 2] = position
    out[:, 3] = 1 / math.sqrt(T)
    return out


class CreditNet(torch.nn.Module):
    """Hidden states (B, T, H) and scalars (B, T, SCALARS) -> raw credits (B, T).

    Kept in training mode, as built (it has no dropout): a loaded explainer, a fresh network
    and one restored from a run's checkpoint all run the same code path."""

    def __init__(self, hidden: int, width: int = 128, layers: int = 2, heads: int = 4) -> None:
        super().__init__()
        self.hidden, self.width, self.layers, self.heads = hidden, width, layers, heads
        self.norm = torch.nn.LayerNorm(hidden, elementwise_affine=False)
        self.project = torch.nn.Linear(hidden + SCALARS, width)
        layer = torch.nn.TransformerEncoderLayer(
            width, heads, 2 * width, dropout=0.0, batch_first=True, norm_first=True
        )
        self.encoder = torch.nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.read = torch.nn.Linear(width, 1)
        self.skip = torch.nn.Linear(SCALARS, 1)
        """Straight from the scalars: the prefix-score change alone is a fair guess."""

    def forward(
        self, states: torch.Tensor, scalars: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        x = self.project(torch.cat([self.norm(states), scalars], dim=-1))  # (B, T, W)
        x = self.encoder(x, src_key_padding_mask=~mask)
        return (self.read(x).squeeze(-1) + self.skip(scalars).squeeze(-1)) * mask

    def sizes(self) -> dict[str, int]:
        """The constructor's arguments, to rebuild it from a saved state."""
        return {"hidden": self.hidden, "width": self.width, "layers": self.layers}

    @classmethod
    def restore(cls, sizes: dict[str, int], state: dict[str, torch.Tensor]) -> CreditNet:
        """A saved network, built without drawing from the caller's RNG (its random
        initialisation, overwritten at once, would shift a run's stream)."""
        with torch.random.fork_rng():
            net = cls(**sizes)
        net.load_state_dict(state)
        return net


def save_net(net: CreditNet, path: Path) -> None:
    torch.save({"sizes": net.sizes(), "state": net.state_dict()}, path)


def load_net(path: Path) -> CreditNet:
    saved = torch.load(path, weights_only=True)
    return CreditNet.restore(saved["sizes"], saved["state"])


def efficient(raw: torch.Tensor, total: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """FastSHAP's additive efficiency correction: each row of `raw` (B, T) plus its residual
    `total - sum` (B,) spread evenly over its tokens (`mask`, bool)."""
    m = mask.float()
    residual = total - (raw * m).sum(dim=1)
    return (raw + residual[:, None] / m.sum(dim=1, keepdim=True).clamp_min(1)) * m


def fastshap_loss(
    credits: torch.Tensor, coalitions: torch.Tensor, gains: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    """Mean over drawn coalitions of (v(S) - v(empty) - sum_{t in S} phi_t)^2.

    credits (B, T), efficient; coalitions (B, K, T) bool, drawn from the Shapley kernel's
    distribution; gains (B, K) = v(S) - v(empty); weight (B, K): 1 for a drawn coalition,
    0 for padding.
    """
    predicted = (coalitions.float() * credits[:, None, :]).sum(dim=-1)  # (B, K)
    return ((predicted - gains).square() * weight).sum() / weight.sum().clamp_min(1)


def kernel_coalitions(T: int, pairs: int, generator: torch.Generator) -> torch.Tensor:
    """`pairs` coalitions of a T-token response drawn from the Shapley kernel's
    distribution (size s with probability proportional to 1 / (s (T - s)), then a uniform
    subset), each followed by its complement (paired sampling halves the variance):
    (2 pairs, T) bool. A response of one token has no coalition between empty and full."""
    if T < 2 or pairs == 0:
        return torch.zeros(0, T, dtype=torch.bool)
    s = torch.arange(1, T, dtype=torch.float64)
    sizes = torch.multinomial(1 / (s * (T - s)), pairs, replacement=True, generator=generator) + 1
    ranks = torch.rand(pairs, T, generator=generator).argsort(dim=1).argsort(dim=1)
    chosen = ranks < sizes[:, None]
    return torch.cat([chosen, ~chosen])


def refine(
    guess: torch.Tensor,
    coalitions: torch.Tensor,
    gains: torch.Tensor,
    total: float,
    prior: float,
) -> torch.Tensor:
    """Credits (T,) that fit a response's own rows, kept near the network's guess, summing to
    `total` = v(N) - v(empty):

        argmin prior |phi - guess|^2 + sum_k (gains_k - z_k . phi)^2   s.t. sum(phi) = total

    (the FastSHAP objective on the drawn coalitions z_k (K, T), with the guess as a Gaussian
    prior whose weight is `prior`). Closed form by the KKT system: with A = prior I + Z^T Z,
    phi = A^-1 (prior guess + Z^T gains - mu 1), mu set by the sum. With no coalitions it is
    the guess, efficiency-corrected."""
    T = guess.shape[0]
    Z, g = coalitions.double(), guess.double()
    A = prior * torch.eye(T, dtype=torch.float64) + Z.T @ Z
    rhs = torch.stack([prior * g + Z.T @ gains.double(), torch.ones(T, dtype=torch.float64)], 1)
    x, y = torch.linalg.solve(A, rhs).unbind(dim=1)
    mu = (x.sum() - total) / y.sum()
    return (x - mu * y).float()


def relative_error(estimate: torch.Tensor, reference: torch.Tensor) -> float:
    """|estimate - reference| / |reference| (L2), the error the benchmarks report."""
    return float((estimate - reference).norm() / reference.norm().clamp_min(1e-12))
