"""The qnei sampler fits each trial's known noise (its squared standard error over seeds),
and parallel workers get distinct proposals from it and from gp (running trials count).

Needs the botorch extra (`make setup` installs it); without it these tests skip, except
under CI, where a missing extra is an error."""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState

from service.executor.base import Job, JobFn
from service.executor.inline import InlineExecutor
from service.tuning.contracts import CONTROL_SPARSE, InnerJob, InnerResult, TrialRecord
from service.tuning.spec.model import SpecError, parse_spec
from service.tuning.study.loop import Timing, run_study

try:
    import torch

    from service.tuning.search import qnei
except ImportError as e:  # the botorch extra is not installed
    if os.environ.get("CI"):
        raise RuntimeError(f"the botorch extra is part of the test machine under CI: {e}") from e
    pytest.skip(f"the botorch extra is not installed: {e}", allow_module_level=True)

FAST = Timing(heartbeat=1, grace=3, lease=4, poll=0.2)
SPACE = {"u0": FloatDistribution(0, 1), "u1": FloatDistribution(0, 1)}
Spec = Callable[..., dict[str, Any]]


def _told(u0: float, u1: float, seed_values: list[float], label: str = "") -> FrozenTrial:
    return optuna.trial.create_trial(
        value=statistics.fmean(seed_values),
        params={"u0": u0, "u1": u1},
        distributions=SPACE,
        user_attrs=TrialRecord(seed_values=seed_values, label=label).to_user_attrs(),
    )


def test_more_seeds_with_the_same_spread_are_better_known() -> None:
    trials = [
        _told(0.1, 0.1, [1.0, 3.0]),
        _told(0.2, 0.2, [1.0, 3.0, 1.0, 3.0]),
        _told(0.3, 0.3, [2.0]),
    ]
    noise = qnei.known_noise(trials)
    assert noise is not None and len(noise) == 3
    pooled = (1 * 2.0 + 3 * (4 / 3)) / 4  # dof-weighted seed variances
    assert noise[0] == pytest.approx((1 * 2.0 + qnei.PRIOR_DOF * pooled) / (1 + qnei.PRIOR_DOF) / 2)
    assert noise[1] < noise[0]  # four seeds: the mean is better known
    assert noise[2] == pytest.approx(pooled)  # one seed: the pooled variance of one run
    assert qnei.known_noise([_told(0.1, 0.1, [2.0])]) is None  # nothing to measure it by


def test_the_noise_is_paired_by_seed_with_the_sparse_arm() -> None:
    # Seed 1 is a hard seed for every arm alike: common to the trials, it is no noise for
    # comparing them. Paired with sparse, a trial's noise is half its differences' variance.
    sparse = _told(0.0, 0.0, [1.0, 3.0, 1.0], label=CONTROL_SPARSE)
    level = _told(0.1, 0.1, [1.5, 3.5, 1.5])  # sparse + 0.5 on every seed: no own noise
    shaky = _told(0.2, 0.2, [1.0, 4.0, 0.0])  # differences 0, +1, -1
    other = _told(0.3, 0.3, [2.0, 2.0])  # two seeds: does not pair with sparse's three
    noise = qnei.known_noise([sparse, level, shaky, other])
    assert noise is not None
    pooled = (2 * 0.0 + 2 * (1.0 / 2)) / 4  # the halved paired variances of level and shaky
    shrink = qnei.PRIOR_DOF / (2 + qnei.PRIOR_DOF)
    assert noise[1] == pytest.approx(shrink * pooled / 3)
    assert noise[2] == pytest.approx(((2 * 0.5) + qnei.PRIOR_DOF * pooled) / 4 / 3)
    assert noise[0] == pytest.approx(pooled / 3) and noise[3] == pytest.approx(pooled / 2)
    unpaired = qnei.known_noise([_told(0.0, 0.0, [1.0, 3.0, 1.0]), level, shaky, other])
    assert unpaired is not None and unpaired[1] > 10 * noise[1]  # the seeds' own spread


def _study_with(trials: list[FrozenTrial], sampler: optuna.samplers.BaseSampler) -> optuna.Study:
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.add_trials(trials)
    return study


def _noisy_trials() -> list[FrozenTrial]:
    """Eight trials of a smooth function, two seeds each, the spread growing with u1."""
    out = []
    for i in range(8):
        u0, u1 = (i * 0.37) % 1, (i * 0.61) % 1
        f = -((u0 - 0.3) ** 2) - (u1 - 0.6) ** 2
        out.append(_told(u0, u1, [f - 0.1 * u1, f + 0.1 * u1]))
    return out


@pytest.mark.parametrize("noise", ["known", "learned"])
def test_qnei_fits_the_noise_of_each_trial(monkeypatch: pytest.MonkeyPatch, noise: str) -> None:
    fitted: list[tuple[Any, torch.Tensor, torch.Tensor | None]] = []
    real = qnei.fit_gp

    def spy(x: torch.Tensor, y: torch.Tensor, yvar: torch.Tensor | None) -> Any:
        model = real(x, y, yvar)
        fitted.append((model, y, yvar))
        return model

    monkeypatch.setattr(qnei, "fit_gp", spy)
    trials = _noisy_trials()
    study = _study_with(trials, qnei.QNEISampler(noise=noise, n_startup_trials=4, seed=0))
    study.ask(SPACE)
    ((model, y, yvar),) = fitted
    if noise == "learned":
        assert yvar is None
        assert type(model.likelihood).__name__ == "GaussianLikelihood"  # one learned level
        return
    expected = torch.tensor(qnei.known_noise(trials), dtype=torch.float64)
    assert yvar is not None and torch.allclose(yvar[:, 0], expected)
    # The likelihood holds exactly those variances, in the GP's standardised units.
    assert type(model.likelihood).__name__ == "FixedNoiseGaussianLikelihood"
    standardised = expected / y.std() ** 2
    assert torch.allclose(model.likelihood.noise.squeeze(), standardised, rtol=1e-4)


@pytest.mark.parametrize("name", ["gp", "qnei"])
def test_k_workers_get_k_distinct_proposals(name: str) -> None:
    """Four asks while the earlier ones still run, each by a sampler of the same seed: only
    a sampler that takes running trials into account proposes four different points."""
    study = _study_with(_noisy_trials(), optuna.samplers.RandomSampler(seed=0))
    proposals = []
    for _ in range(4):
        study.sampler = (
            optuna.samplers.GPSampler(seed=7, n_startup_trials=4)
            if name == "gp"
            else qnei.QNEISampler(noise="known", n_startup_trials=4, seed=7)
        )
        trial = study.ask(SPACE)
        proposals.append((round(trial.params["u0"], 6), round(trial.params["u1"], 6)))
    assert study.get_trials(states=(TrialState.RUNNING,)) and len(set(proposals)) == 4, proposals


class SeedNoiseExecutor(InlineExecutor):
    """Finishes each job at once: a smooth function of the weights plus seed noise."""

    def submit(self, fn: JobFn, job: Job) -> None:
        super().submit(_result, job)  # type: ignore[arg-type]


def _result(job: InnerJob) -> InnerResult:
    w = job.config.shaping.weights
    value = -((w["red"] - 0.6) ** 2) + (0.05 if job.seed_index else -0.05) * w["uniform"]
    curve = {0: {"eval/rm_mean": 0.0}, 4: {"eval/rm_mean": value}}
    return InnerResult(job.seed_index, host="test", value=value, curve=curve, steps=4)


def test_a_study_with_qnei_runs_past_its_startup(tmp_path: Path, make_spec: Spec) -> None:
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    spec = parse_spec(make_spec(budget=7, seeds=2, sampler="qnei", startup_trials=4))
    run_study(spec, url, tmp_path, SeedNoiseExecutor(), timing=FAST)
    study = optuna.load_study(study_name=spec.name, storage=url)
    assert study.user_attrs["sampler"]["noise"] == "known"
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 7


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"noise": "learned"}, "noise: learned is an option of sampler qnei"),
        ({"sampler": "qnei", "constraints": {"kl_max": 1.0}}, "use sampler gp"),
    ],
)
def test_noise_and_qnei_misuse_is_refused(
    make_spec: Spec, fields: dict[str, Any], words: str
) -> None:
    with pytest.raises(SpecError, match=words):
        parse_spec(make_spec(**fields))
