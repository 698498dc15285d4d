"""Stopping unpromising trials part-way, with any number of seeds per trial.

A trial's intermediate value at step s is the mean of its seeds' held-out rewards at s,
reported to Optuna once every seed has reached s; the study's pruner (median, or Hyperband:
successive halving in brackets) then judges the trial. A pruned trial's seeds all stop at
their next evaluation and keep their curves and costs; the study tells it PRUNED, so it is
never the incumbent and does not count toward the budget.

Where progress goes: each seed writes its evaluations into its own user attribute of the
trial (`TrialRecord.progress_key`) in the study store, the one line every worker already
has to the study (heartbeats, the cancel check), on any Ray node, inline, and under the
service's coordinator alike. It outlives a crash: a retried trial inherits its seeds'
progress, and Optuna's pruners keep no state of their own (Hyperband rebuilds its brackets
from the stored intermediate values and rung attributes), so `resume` goes on judging as
the crashed coordinator would have.

Who judges: the worker whose evaluation completes step s (the last of the trial's seeds to
get there), not the coordinator. The inline executor runs each inner run to its end inside
`submit`, so a coordinator-side judge would never stop one; on Ray the last seed knows the
mean the moment it exists, a coordinator only a poll later, steps the other seeds would
spend. Two seeds that reach s at once may both report it: they write the same mean, and
either one's prune stands.
"""

from __future__ import annotations

import statistics

import optuna

from service.tuning.contracts import PrunerConfig, TrialRecord, write_stored
from service.tuning.spec.model import StudySpec

REDUCTION_FACTOR = 3
"""Hyperband's eta: each rung keeps the best third of its bracket (Li et al. 2018's default)."""


def pruner_config(spec: StudySpec) -> PrunerConfig | None:
    """The spec's pruner, with its resources in the inner run's PPO steps: a trial can first
    be stopped at its first evaluation after training (`eval_interval`), and Hyperband's
    largest rung is the run's `steps`."""
    if spec.pruner == "none":
        return None
    config = spec.base
    return PrunerConfig(
        kind=spec.pruner,
        min_resource=config.eval_interval,
        max_resource=config.steps,
        reduction_factor=REDUCTION_FACTOR,
    )


def make_pruner(config: PrunerConfig) -> optuna.pruners.BasePruner:
    if config.kind == "median":
        # Step 0 is the policy before training, the same for every trial: nothing to judge.
        return optuna.pruners.MedianPruner(n_warmup_steps=config.min_resource)
    if config.kind == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=config.min_resource,
            max_resource=config.max_resource,
            reduction_factor=config.reduction_factor,
        )
    raise ValueError(f"unknown pruner {config.kind!r}; choose median or hyperband")


def open_judged_study(
    name: str, storage: optuna.storages.BaseStorage, config: PrunerConfig
) -> optuna.Study:
    """The study as a judge sees it: its trials in the store, the spec's pruner."""
    return optuna.load_study(study_name=name, storage=storage, pruner=make_pruner(config))


def judge(
    study: optuna.Study,
    storage: optuna.storages.BaseStorage,
    trial_id: int,
    seeds: int,
    config: PrunerConfig,
    prunable: bool = True,
) -> bool:
    """Report the trial's mean over its seeds at every step they have all reached and it
    has not reported yet, asking the pruner after each; True once the trial is pruned (by
    this call, or earlier by any seed's). A trial that is not `prunable` (a control arm) is
    asked too, so that it stands in Hyperband's rungs as a competitor, but never stopped."""
    trial = storage.get_trial(trial_id)
    if TrialRecord.from_trial(trial).pruned_at is not None:
        return True
    for step, mean in _new_means(trial, seeds):
        storage.set_trial_intermediate_value(trial_id, step, mean)
        if step >= config.max_resource:  # finished: pruning it would waste a whole run
            continue
        if study.pruner.prune(study, storage.get_trial(trial_id)) and prunable:
            write_stored(storage, trial_id, TrialRecord(pruned_at=step))
            return True
    return False


def _new_means(trial: optuna.trial.FrozenTrial, seeds: int) -> list[tuple[int, float]]:
    """(step, mean over seeds) at the steps every seed has evaluated and the trial has not
    reported, in order (Optuna's pruners judge a trial at its last reported step)."""
    progress = TrialRecord.progress(trial.user_attrs, seeds)
    common = set.intersection(*(set(p) for p in progress))
    new = sorted(common - set(trial.intermediate_values))
    return [(s, statistics.fmean(p[s] for p in progress)) for s in new]
