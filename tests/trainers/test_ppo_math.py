import math

import pytest
import torch

from trainers.ppo_math import (
    entropy_from_logits,
    explained_variance,
    gae,
    kl_penalty,
    logprobs_from_logits,
    masked_mean,
    masked_var,
    masked_whiten,
    policy_loss,
    value_loss,
)
from trainers.signals import area_under_curve, distinct_n, repeated_token_fraction


def ragged_mask(lengths: list[int], T: int) -> torch.Tensor:
    return (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]).long()


def naive_gae(
    rewards: list[float], values: list[float], gamma: float, lam: float
) -> tuple[list[float], list[float]]:
    """One episode, textbook recursion: A_t = sum_l (gamma lam)^l delta_{t+l}, V after the end = 0."""
    T = len(rewards)
    deltas = [
        rewards[t] + gamma * (values[t + 1] if t + 1 < T else 0.0) - values[t] for t in range(T)
    ]
    advantages = [sum((gamma * lam) ** (k - t) * deltas[k] for k in range(t, T)) for t in range(T)]
    return advantages, [a + v for a, v in zip(advantages, values, strict=True)]


@pytest.mark.parametrize(("gamma", "lam"), [(1.0, 0.95), (0.9, 0.8), (1.0, 1.0)])
def test_gae_matches_a_naive_loop_per_episode(gamma: float, lam: float) -> None:
    g = torch.Generator().manual_seed(0)
    lengths, T = [5, 1, 3, 5], 5
    mask = ragged_mask(lengths, T)
    rewards = torch.randn(4, T, generator=g)
    values = torch.randn(4, T, generator=g)  # garbage on padding: must be ignored
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    for i, n in enumerate(lengths):
        want_a, want_r = naive_gae(rewards[i, :n].tolist(), values[i, :n].tolist(), gamma, lam)
        torch.testing.assert_close(advantages[i, :n], torch.tensor(want_a), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(returns[i, :n], torch.tensor(want_r), rtol=1e-5, atol=1e-5)
        assert advantages[i, n:].abs().sum() == 0 and returns[i, n:].abs().sum() == 0


def test_gae_with_lambda_one_gives_monte_carlo_returns() -> None:
    """gamma = lambda = 1: returns are the reward-to-go, whatever the values."""
    mask = ragged_mask([4, 2], 4)
    rewards = torch.tensor([[0.0, 1.0, 0.0, 2.0], [1.0, -1.0, 9.0, 9.0]])
    _, returns = gae(rewards, torch.randn(2, 4), mask, 1.0, 1.0)
    torch.testing.assert_close(returns, torch.tensor([[3.0, 3.0, 2.0, 2.0], [0.0, -1.0, 0, 0]]))


def test_kl_estimators_have_the_kl_as_expectation() -> None:
    p = torch.tensor([0.5, 0.3, 0.15, 0.05])
    q = torch.tensor([0.25, 0.25, 0.25, 0.25])
    kl = float((p * (p.log() - q.log())).sum())
    for estimator in ("k1", "k3"):
        per_token = kl_penalty(p.log(), q.log(), estimator)  # the value at each outcome
        assert float((p * per_token).sum()) == pytest.approx(kl, rel=1e-6), estimator
    # ... and from samples, as PPO sees them
    g = torch.Generator().manual_seed(1)
    y = torch.multinomial(p, 200_000, replacement=True, generator=g)
    for estimator in ("k1", "k3"):
        mc = float(kl_penalty(p.log()[y], q.log()[y], estimator).mean())
        assert mc == pytest.approx(kl, rel=0.03), estimator


def test_k3_is_never_negative_and_k1_can_be() -> None:
    g = torch.Generator().manual_seed(2)
    logprobs, ref_logprobs = (
        -3 * torch.rand(8, 16, generator=g),
        -3 * torch.rand(8, 16, generator=g),
    )
    assert (kl_penalty(logprobs, ref_logprobs, "k3") >= 0).all()
    assert (kl_penalty(logprobs, ref_logprobs, "k1") < 0).any()
    assert kl_penalty(logprobs, logprobs, "k3").abs().max() == 0
    with pytest.raises(ValueError, match="'k2'"):
        kl_penalty(logprobs, ref_logprobs, "k2")  # type: ignore[arg-type]


def test_masked_whiten_ignores_padding() -> None:
    mask = ragged_mask([3, 2], 4)
    values = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, 5.0, -50.0, 7.0]])
    white = masked_whiten(values, mask)
    kept = white[mask.bool()]
    assert float(kept.mean()) == pytest.approx(0.0, abs=1e-6)
    assert float(kept.std()) == pytest.approx(1.0, abs=1e-4)  # unbiased, like masked_var
    torch.testing.assert_close(kept, (values[mask.bool()] - 3.0) / math.sqrt(2.5))
    kept_mean = masked_whiten(values, mask, shift_mean=False)[mask.bool()]
    assert float(kept_mean.mean()) == pytest.approx(3.0, abs=1e-5)
    assert float(masked_mean(values, mask)) == pytest.approx(3.0)
    torch.testing.assert_close(masked_mean(values, mask, dim=1), torch.tensor([2.0, 4.5]))
    assert float(masked_var(values, mask, unbiased=False)) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="at least 2"):
        masked_var(values, ragged_mask([1, 0], 4))


def test_policy_loss_clips_only_where_the_ratio_leaves_the_trust_region() -> None:
    mask = torch.ones(1, 3)
    old = torch.zeros(1, 3)
    advantages = torch.tensor([[1.0, 1.0, -1.0]])
    new = torch.tensor([[0.0, math.log(2.0), math.log(2.0)]], requires_grad=True)
    loss, stats = policy_loss(new, old, advantages, mask, clip_coef=0.2)
    # token 0: ratio 1 -> -A; token 1: ratio 2, A > 0 -> clipped to -1.2 A (no gradient);
    # token 2: ratio 2, A < 0 -> the pessimistic unclipped -ratio * A = 2.
    assert float(loss.detach()) == pytest.approx((-1.0 - 1.2 + 2.0) / 3)
    loss.backward()
    assert new.grad is not None
    assert new.grad[0, 1] == 0 and new.grad[0, 0] != 0 and new.grad[0, 2] != 0
    assert float(stats["clipfrac"]) == pytest.approx(1 / 3)


def test_value_loss_is_pessimistic_about_clipped_moves() -> None:
    mask = torch.ones(1, 2)
    old, returns = torch.zeros(1, 2), torch.tensor([[1.0, -1.0]])
    new = torch.tensor([[1.0, 1.0]])  # moved 1.0 each; clip 0.2
    loss, clipfrac = value_loss(new, old, returns, mask, clip_coef=0.2)
    # token 0: plain error 0, clipped (0.2 - 1)^2 = 0.64 -> 0.64; token 1: plain 4, clipped 1.44 -> 4
    assert float(loss) == pytest.approx(0.5 * (0.64 + 4.0) / 2)
    assert float(clipfrac) == pytest.approx(0.5)


def test_logprobs_entropy_and_explained_variance() -> None:
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 3, 5, generator=g)
    tokens = torch.randint(0, 5, (2, 3), generator=g)
    want = torch.log_softmax(logits, -1).gather(-1, tokens[..., None])[..., 0]
    torch.testing.assert_close(logprobs_from_logits(logits, tokens), want)
    torch.testing.assert_close(
        entropy_from_logits(torch.zeros(1, 1, 7)), torch.tensor([[math.log(7)]])
    )
    p = torch.softmax(logits, -1)
    torch.testing.assert_close(entropy_from_logits(logits), -(p * p.log()).sum(-1))
    mask = torch.ones(2, 3)
    returns = torch.randn(2, 3, generator=g)
    assert float(explained_variance(returns, returns, mask)) == pytest.approx(1.0)
    assert float(
        explained_variance(torch.zeros(2, 3) + returns.mean(), returns, mask)
    ) == pytest.approx(0.0, abs=1e-6)


def test_hacking_signals_and_area_under_curve() -> None:
    assert repeated_token_fraction([[1, 1, 1, 1], [1, 2, 3, 4]]) == pytest.approx(0.375)
    assert distinct_n([[1, 2, 1, 2]], 1) == pytest.approx(0.5)
    assert distinct_n([[1, 2, 1, 2]], 2) == pytest.approx(2 / 3)
    assert distinct_n([[1]], 2) == 0.0
    curve = {0: {"r": 0.0}, 10: {"r": 1.0}, 20: {"r": 1.0}}
    assert area_under_curve(curve, "r") == pytest.approx(0.75)  # (5 + 10) / 20
    assert area_under_curve({5: {"r": 2.0}}, "r") == 2.0
    assert math.isnan(area_under_curve(curve, "missing"))
