"""Outer samplers, rebuilt from the configuration stored in the study.

A sampler is rebuilt before every ask, seeded from the study seed and the number of
trials started so far (finished or running): a resumed study proposes what an
uninterrupted one would have, whatever state the old process's sampler held, and trials
asked side by side for parallel workers get different seeds, so different proposals.
"""

from __future__ import annotations

from typing import Any

import optuna


class SamplerUnavailable(RuntimeError):
    """The sampler needs an optional extra that is not installed."""


def sampler_seed(study_seed: int, started: int) -> int:
    return (study_seed * 1_000_003 + started) % (2**32)


def make_sampler(config: dict[str, Any], started: int) -> optuna.samplers.BaseSampler:
    """`config`: {"name": gp|tpe|random|qnei, "seed": int, "startup_trials": int, and for
    qnei "noise": known|learned}."""
    name, startup = config["name"], int(config["startup_trials"])
    seed = sampler_seed(int(config["seed"]), started)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "tpe":
        # constant_liar: trials still running count as bad guesses, so parallel workers
        # spread out instead of proposing the same point.
        return optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=startup, multivariate=True, constant_liar=True
        )
    if name == "gp":
        # GPSampler fits a noise level (deterministic_objective=False): PPO is noisy.
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup)
    if name == "qnei":
        return _qnei(config.get("noise", "known"), startup, seed)
    raise ValueError(f"unknown sampler {name!r}; choose gp, tpe, random or qnei")


def _qnei(noise: str, startup: int, seed: int) -> optuna.samplers.BaseSampler:
    try:
        from service.tuning.search.qnei import QNEISampler
    except ImportError as e:
        raise SamplerUnavailable(
            "sampler 'qnei' needs BoTorch: pip install 'shapetune[botorch]' "
            f"(or choose gp, tpe, random); import failed: {e}"
        ) from e
    return QNEISampler(noise=noise, n_startup_trials=startup, seed=seed)


def check_available(name: str) -> None:
    """Raise `SamplerUnavailable` if sampler `name` needs an extra that is not installed."""
    if name == "qnei":
        _qnei("known", 0, 0)
