"""The search space: stick-breaking weights on the simplex, control arms at its vertices."""

from __future__ import annotations

import re

import numpy as np
import optuna
import pytest

from service.tuning.search import space
from service.tuning.spec.model import parse_spec

METHODS = ["sparse", "uniform", "red", "shapley"]


def _params(u: np.ndarray) -> dict[str, float]:
    return {f"u{i}": float(v) for i, v in enumerate(u)}


@pytest.mark.parametrize("K", [2, 3, 5])
def test_weights_are_on_the_simplex_for_random_u(K: int) -> None:
    methods = [*METHODS, "attention"][:K]
    rng = np.random.default_rng(0)
    corners = np.array([[0.0] * (K - 1), [1.0] * (K - 1)])
    for u in [*rng.random((500, K - 1)), *corners]:
        weights = space.weights_from_params(methods, _params(u))
        assert list(weights) == methods
        w = np.array(list(weights.values()))
        assert (w >= 0).all() and (w <= 1).all()
        assert w.sum() == pytest.approx(1.0, abs=1e-12)


def test_control_arms_map_to_the_vertices_pure_sparse_first() -> None:
    spec = parse_spec(
        {"name": "s", "task": {"name": "synthetic"}, "methods": METHODS[::-1], "budget": 8}
    )
    arms = space.control_arms(spec)
    assert [label for label, _ in arms] == [
        f"pure {m}" for m in ["sparse", "shapley", "red", "uniform"]
    ]
    seen = set()
    for label, params in arms:
        method = label.removeprefix("pure ")
        weights = space.weights_from_params(spec.methods, params)
        assert weights == {m: (1.0 if m == method else 0.0) for m in spec.methods}, label
        assert all(0.0 <= v <= 1.0 for v in params.values())
        seen.add(tuple(sorted(params.items())))
    assert len(seen) == len(arms)  # distinct points: none is a duplicate of another


def test_control_arms_put_knobs_at_their_middle() -> None:
    spec = parse_spec(
        {
            "name": "s",
            "task": {"name": "synthetic"},
            "methods": ["sparse", "red"],
            "budget": 8,
            "knobs": {
                "kl_coef": {"low": 0.0, "high": 0.2},
                "lr": {"low": 1e-6, "high": 1e-4, "log": True},
            },
        }
    )
    for _, params in space.control_arms(spec):
        assert params["kl_coef"] == pytest.approx(0.1)
        assert params["lr"] == pytest.approx(1e-5)


@pytest.mark.parametrize("K", [2, 3, 4])
def test_uniform_u_gives_a_uniform_dirichlet(K: int) -> None:
    """Dirichlet(1, ..., 1): each weight has mean 1/K and variance (K - 1) / (K^2 (K + 1)),
    and every coordinate is alike (no method is favoured by its position)."""
    methods = METHODS[:K]
    rng = np.random.default_rng(1)
    n = 20_000
    w = np.array(
        [
            list(space.weights_from_params(methods, _params(u)).values())
            for u in rng.random((n, K - 1))
        ]
    )
    mean, var = w.mean(axis=0), w.var(axis=0)
    expected_var = (K - 1) / (K**2 * (K + 1))
    se_mean = np.sqrt(expected_var / n)
    assert np.abs(mean - 1 / K).max() < 5 * se_mean, mean
    assert np.abs(var / expected_var - 1).max() < 0.05, var
    # the marginal of a Dirichlet(1, ..., 1) weight is Beta(1, K - 1): P(w < x) = 1 - (1 - x)^(K-1)
    for x in (0.1, 0.3, 0.6):
        cdf = 1 - (1 - x) ** (K - 1)
        assert np.abs((w < x).mean(axis=0) - cdf).max() < 0.015, (x, (w < x).mean(axis=0))


def test_suggest_asks_for_k_minus_1_weights_and_the_knobs() -> None:
    spec = parse_spec(
        {
            "name": "s",
            "task": {"name": "synthetic"},
            "methods": ["sparse", "uniform", "red"],
            "budget": 8,
            "knobs": {"kl_coef": {"low": 0.01, "high": 0.2}},
        }
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    weights, knobs = space.suggest(trial, spec)
    assert set(trial.params) == {"u0", "u1", "kl_coef"}
    assert sum(weights.values()) == pytest.approx(1.0)
    assert weights == space.weights_from_params(spec.methods, trial.params)
    assert knobs == {"kl_coef": trial.params["kl_coef"]} and 0.01 <= knobs["kl_coef"] <= 0.2


def test_a_method_option_is_a_knob_the_study_searches() -> None:
    """`amortized.prior` (any numeric method option) is searched like a PPO knob
    and reaches the inner run's method options; other options are refused, by name."""
    from service.tuning.spec.model import SpecError, corner_configs

    spec = parse_spec(
        {
            "name": "amortized-knob",
            "task": {"name": "synthetic"},
            "methods": ["sparse", "amortized"],
            "knobs": {
                "amortized.prior": {"low": 0.05, "high": 0.5},
                "lr": {"low": 1e-4, "high": 1e-3},
            },
            "inner": {"shaping": {"options": {"amortized": {"audit_every": 2}}}},
            "budget": 4,
        }
    )
    trial = optuna.create_study().ask()
    weights, knobs = space.suggest(trial, spec)
    config = spec.train_config(weights, knobs, seed=0)
    options = config.shaping.options["amortized"]
    assert options == {"audit_every": 2, "prior": knobs["amortized.prior"]}
    assert config.ppo.lr == knobs["lr"]
    low, high = corner_configs(spec)
    assert [c.shaping.options["amortized"]["prior"] for c in (low, high)] == [0.05, 0.5]
    for bad, words in [
        ("amortized.teacher", "unknown knob(s) ['amortized.teacher']"),
        ("magic.beta", "unknown knob(s) ['magic.beta']"),
    ]:
        with pytest.raises(SpecError, match=re.escape(words)):
            parse_spec({**spec.stored(), "knobs": {bad: {"low": 0.1, "high": 0.2}}})
    with pytest.raises(SpecError, match=r"amortized.prior=2000000\.0 is invalid"):
        parse_spec({**spec.stored(), "knobs": {"amortized.prior": {"low": 0.1, "high": 2e6}}})
    searched_and_set = {"shaping": {"options": {"amortized": {"prior": 0.3}}}}
    with pytest.raises(SpecError, match=r"remove inner\.shaping\.options\.amortized\.prior"):
        parse_spec({**spec.stored(), "inner": searched_and_set})
