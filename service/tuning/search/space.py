"""The search space: mixing weights on the simplex, plus optional PPO knobs.

Weights are parameterised by stick-breaking over K - 1 numbers `u_i` in [0, 1]:

    z_i = 1 - u_i ** (1 / (K - i)),   w_i = z_i * prod_{j < i} (1 - z_j),   w_K = the rest

With uniform `u` the weights are uniform on the simplex (z_i ~ Beta(1, K - i) is the
stick-breaking construction of Dirichlet(1, ..., 1)), the map is smooth for a GP, it has
exactly K - 1 dimensions (no redundant scale), and every vertex, a pure method, is reached
at a corner of the cube, so control arms are ordinary points of the same space.
"""

from __future__ import annotations

from collections.abc import Sequence

import optuna

from service.tuning.contracts import control_label
from service.tuning.spec.model import StudySpec


def _u_name(i: int) -> str:
    return f"u{i}"


def weights_from_params(methods: Sequence[str], params: dict[str, float]) -> dict[str, float]:
    K = len(methods)
    weights, rest = {}, 1.0
    for i, method in enumerate(methods[:-1]):
        z = 1.0 - params[_u_name(i)] ** (1.0 / (K - 1 - i))
        weights[method] = rest * z
        rest -= weights[method]
    weights[methods[-1]] = max(rest, 0.0)
    total = sum(weights.values())
    return {m: w / total for m, w in weights.items()}


def vertex_params(methods: Sequence[str], method: str) -> dict[str, float]:
    """The params of the pure `method`: z = 1 at its position, z = 0 before it."""
    j = list(methods).index(method)
    # u = 1 gives z = 0 (nothing taken); u = 0 gives z = 1 (all that is left). The u's after
    # the vertex's own do not matter once the stick is used up: 1 keeps the point unique.
    return {_u_name(i): (0.0 if i == j else 1.0) for i in range(len(methods) - 1)}


def suggest(trial: optuna.Trial, spec: StudySpec) -> tuple[dict[str, float], dict[str, float]]:
    """Ask the trial for its weights and knobs."""
    params = {
        _u_name(i): trial.suggest_float(_u_name(i), 0.0, 1.0) for i in range(len(spec.methods) - 1)
    }
    knobs = {
        name: trial.suggest_float(name, k.low, k.high, log=k.log) for name, k in spec.knobs.items()
    }
    return weights_from_params(spec.methods, params), knobs


def control_arms(spec: StudySpec) -> list[tuple[str, dict[str, float]]]:
    """(label, params) of the baselines every study runs first: pure sparse (as the
    classic-RLHF reference) and each pure searched method; knobs at their range's middle."""
    knobs = {
        name: (k.low * k.high) ** 0.5 if k.log else (k.low + k.high) / 2
        for name, k in spec.knobs.items()
    }
    order = sorted(spec.methods, key=lambda m: m != "sparse")  # sparse first
    return [(control_label(m), {**vertex_params(spec.methods, m), **knobs}) for m in order]
