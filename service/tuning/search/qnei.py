"""qNEI (BoTorch) with the noise of each trial known instead of learned.

A trial's value is the mean of its seeds' inner runs, so how noisy it is can be measured:
its squared standard error over seeds. BoTorch's default `qnei_candidates_func` fits one
noise level for every trial; here the GP gets each trial's own (`SingleTaskGP` with
`train_Yvar`: a fixed-noise likelihood), so a control arm measured with more seeds counts
as better known and the GP does not explain real differences away as noise.

The seeds' sample variance of a 2-seed trial is itself very noisy (one degree of freedom):
each trial's variance is shrunk towards the variance pooled over all trials (PPO's seed
noise is much the same across the simplex) with the weight of PRIOR_DOF degrees of
freedom, then divided by the trial's seeds. A study whose trials all have one seed has no
noise to see: the GP learns one level, as with `noise: learned`.

Needs the `botorch` extra (imported by `service.tuning.search.samplers` only when asked for).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

import torch
from botorch.acquisition.logei import qLogNoisyExpectedImprovement
from botorch.fit import fit_gpytorch_mll
from botorch.models import SingleTaskGP
from botorch.models.transforms.outcome import Standardize
from botorch.optim import optimize_acqf
from botorch.sampling import SobolQMCNormalSampler
from botorch.utils.transforms import normalize, unnormalize
from gpytorch.mlls import ExactMarginalLogLikelihood
from optuna.distributions import BaseDistribution
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState
from optuna_integration import BoTorchSampler

from service.tuning.contracts import CONTROL_SPARSE, TrialRecord
from service.tuning.search.pairing import differences, pool

PRIOR_DOF = 2.0
"""Degrees of freedom the pooled variance weighs in each trial's variance estimate."""
MIN_NOISE = 1e-6
"""Smallest noise variance, relative to the values' variance: a GP with exactly zero noise
at a point is numerically fragile."""


def known_noise(trials: Sequence[FrozenTrial]) -> list[float] | None:
    """Each trial's noise variance (the variance of its mean over seeds), in order; None
    when no trial has two seeds to measure it.

    Paired by seed where the study has its pure-sparse control arm: every trial trains and
    is evaluated on the same seeds (common random numbers), so what a seed does to every
    trial alike moves them together and is no noise to the GP's comparisons. A trial's own
    noise is then half the variance of its per-seed differences from sparse (both arms add
    theirs); sparse's own, and a trial whose seeds do not pair, get the pooled one."""
    records = [TrialRecord.from_trial(t) for t in trials]
    seeds = [r.seed_values for r in records]
    sparse = next((r.seed_values for r in records if r.label == CONTROL_SPARSE), [])
    own: list[list[float] | None] = list(seeds)
    if len(sparse) >= 2:
        own = [
            None if d is None or r.label == CONTROL_SPARSE else [x / math.sqrt(2) for x in d]
            for r, d in zip(records, differences(seeds, sparse), strict=True)
        ]
    pooled = pool([s for s in own if s is not None])
    if pooled is None:
        return None
    noise = []
    for values, kept in zip(seeds, own, strict=True):
        n = max(len(values), 1)
        measured = statistics.variance(kept) if kept is not None and len(kept) >= 2 else None
        dof = n - 1 if measured is not None else 0
        shrunk = (dof * (measured or 0.0) + PRIOR_DOF * pooled.variance) / (dof + PRIOR_DOF)
        noise.append(shrunk / n)
    return noise


def fit_gp(train_x: torch.Tensor, train_y: torch.Tensor, yvar: torch.Tensor | None) -> SingleTaskGP:
    """The GP over normalised `train_x` (N, d) and `train_y` (N, 1): with `yvar` (N, 1) as
    each point's known noise, or one learned noise level when it is None."""
    if yvar is not None:
        floor = MIN_NOISE * float(train_y.var()) if len(train_y) > 1 else MIN_NOISE
        yvar = yvar.clamp_min(max(floor, 1e-12))
    model = SingleTaskGP(train_x, train_y, train_Yvar=yvar, outcome_transform=Standardize(m=1))
    fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
    return model


class QNEISampler(BoTorchSampler):
    """BoTorch's sampler with qNEI on a GP that sees each trial's noise (`noise="known"`) or
    learns one level (`noise="learned"`); trials still running are pending points, so
    parallel workers get different proposals."""

    def __init__(self, *, noise: str, n_startup_trials: int, seed: int) -> None:
        super().__init__(
            candidates_func=self._candidates,
            n_startup_trials=n_startup_trials,
            consider_running_trials=True,
            seed=seed,
        )
        self.noise = noise
        self._yvar: torch.Tensor | None = None

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        # The rows BoTorchSampler hands the candidates function are the completed trials in
        # this order (optuna_integration.botorch, sample_relative).
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        noise = known_noise(complete) if self.noise == "known" else None
        self._yvar = None if noise is None else torch.tensor(noise, dtype=torch.float64)[:, None]
        return super().sample_relative(study, trial, search_space)

    def _candidates(
        self,
        train_x: torch.Tensor,
        train_obj: torch.Tensor,
        train_con: torch.Tensor | None,
        bounds: torch.Tensor,
        pending_x: torch.Tensor | None,
    ) -> torch.Tensor:
        if train_obj.size(-1) != 1 or train_con is not None:
            raise ValueError("qnei models one objective without constraints; use sampler gp")
        x = normalize(train_x, bounds=bounds)  # (N, d) in the unit cube
        model = fit_gp(x, train_obj, self._yvar)
        # The log form of qNEI: same acquisition, without its vanishing gradients
        # (Ament et al. 2023, BoTorch's recommendation).
        acqf = qLogNoisyExpectedImprovement(
            model=model,
            X_baseline=x,
            sampler=SobolQMCNormalSampler(torch.Size([256])),
            X_pending=None if pending_x is None else normalize(pending_x, bounds=bounds),
        )
        unit = torch.stack([torch.zeros(x.size(-1)), torch.ones(x.size(-1))]).to(x)
        candidates, _ = optimize_acqf(
            acq_function=acqf,
            bounds=unit,
            q=1,
            num_restarts=10,
            raw_samples=512,
            options={"batch_limit": 5, "maxiter": 200},
        )
        return unnormalize(candidates.detach(), bounds=bounds)
