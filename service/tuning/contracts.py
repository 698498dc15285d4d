"""What crosses a boundary in a study, as typed values.

`InnerJob` is what a coordinator hands a worker and `InnerResult` what it gets back: frozen
dataclasses of plain data, so Ray pickles them to any node. `TrialRecord` owns every user
attribute a trial keeps in Optuna's storage: the loop writes them through it and the read
model reads them through it, so no key is spelled twice.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from trainers.config import TrainConfig

Curve = dict[int, dict[str, float]]
"""A run's held-out metrics by evaluation step."""


def control_label(method: str) -> str:
    """The label of the control arm that gives `method` all the weight."""
    return f"pure {method}"


CONTROL_SPARSE = control_label("sparse")
"""The pure-sparse control arm, the baseline every shape is compared with."""
REEVALUATION = "reevaluation"
"""The study user attribute that keeps the latest re-evaluation of the incumbent."""


@dataclass(frozen=True)
class PrunerConfig:
    """How a study judges its trials part-way (`service.tuning.search.pruning`), as every process
    that judges one builds the same pruner from it. Steps are PPO steps of the inner run."""

    kind: str
    """"median" or "hyperband"."""
    min_resource: int
    """The first step a trial may be stopped at: the first evaluation after training."""
    max_resource: int
    """The inner run's steps: a run that got there has cost all it will, and is not pruned."""
    reduction_factor: int = 3
    """Hyperband keeps the best 1 / reduction_factor of a bracket's trials at each rung."""


@dataclass(frozen=True)
class InnerJob:
    """One inner run of one trial (or of a re-evaluation: `trial_id` None)."""

    study: str
    storage: str
    """The study database, for heartbeats and the cancel check."""
    trial_id: int | None
    """Optuna's id of the trial to heartbeat; None for a run of no trial."""
    trial_number: int
    seed_index: int
    config: TrainConfig
    """The run, its `run_dir` named by the trial's parameters: a retried trial continues
    from its checkpoint."""
    home: str
    heartbeat_s: float
    objective: str
    target: float | None
    pruner: PrunerConfig | None
    """Report each evaluation, judge the trial once all its seeds have reached a step, and
    stop when it is pruned (None: the study prunes nothing)."""
    seeds: int
    """Inner runs of the trial: its value at a step is their mean there."""
    credit: bool
    """Credit the sample responses token by token (`service.tuning.study.credits`)."""
    gpus: float = 0.0
    """GPUs the executor reserves for the run (the spec's resources.gpus): the run must
    then find CUDA, on the device Ray gave it."""
    prunable: bool = True
    """False for a control arm: judged with the others, so that proposals are measured
    against it, but never stopped (every proposal is compared with the baselines)."""

    def __post_init__(self) -> None:
        if self.config.run_dir is None:
            raise ValueError("an inner run keeps its checkpoints in a folder: set config.run_dir")

    @property
    def run_dir(self) -> Path:
        return Path(str(self.config.run_dir))


@dataclass(frozen=True)
class ArtifactFile:
    kind: str
    path: str
    bytes: int


@dataclass(frozen=True)
class InnerResult:
    """What an inner run gave back: its objective value and curves, or the run's own `error`
    (a NaN, a bad model; a lost worker is the executor's `Outcome.error` instead)."""

    seed_index: int
    host: str
    artifacts: list[ArtifactFile] = field(default_factory=list)
    """The files it left on `host`, for the study's artifacts index."""
    node: str = ""
    """The Ray node that ran it ("" outside Ray)."""
    devices: str = ""
    """CUDA_VISIBLE_DEVICES as the run saw it: the GPUs Ray gave it ("" for none)."""
    resumed_from: int = 0
    """The step of the checkpoint it continued from (0: it started afresh)."""
    error: str | None = None
    value: float = float("nan")
    curve: Curve = field(default_factory=dict)
    final: dict[str, float] = field(default_factory=dict)
    samples: list[str] = field(default_factory=list)
    sample_credits: list[dict[str, Any]] = field(default_factory=list)
    sample_credits_note: str = ""
    steps: int = 0
    stopped_early: bool = False
    """It stopped before its last step: cancelled, or pruned."""
    pruned: bool = False


@dataclass(frozen=True)
class TrialRecord:
    """A trial's user attributes. Each is written when it is known: the label when a control
    arm is queued, weights and knobs when the trial is asked, results when it is told, a
    reason when it fails; `to_user_attrs` gives the ones this record sets."""

    label: str = ""
    """A control arm's name (`CONTROL_SPARSE`, "pure red", ...); "" for a proposal."""
    weights: dict[str, float] | None = None
    knobs: dict[str, float] = field(default_factory=dict)
    seed_values: list[float] = field(default_factory=list)
    stderr: float | None = None
    curves: list[Curve] = field(default_factory=list)
    final: dict[str, float] = field(default_factory=dict)
    samples: list[str] = field(default_factory=list)
    sample_credits: list[dict[str, Any]] = field(default_factory=list)
    sample_credits_note: str = ""
    failed_for: str = ""
    """The trial's own error; counts toward the spec's max_failures."""
    stopped_for: str = ""
    """Why it stopped for no fault of its own (a cancel, a coordinator that died)."""
    placements: list[dict[str, Any]] = field(default_factory=list)
    """Where each seed's inner run ran: seed_index, host, Ray node, the GPUs it was given."""
    steps: list[int] = field(default_factory=list)
    """PPO steps each seed ran (its compute): fewer than the inner run's for a pruned trial."""
    pruned_at: int | None = None
    """The step at which the pruner stopped the trial; its seeds stop when they see it."""
    warm_start: str = ""
    """"study#number" of an earlier study's trial this one copies to seed the sampler
    (`spec.warm_start`): it does not count toward the budget and is never the incumbent."""
    reused_from: str = ""
    """"study#number" of an earlier study's control arm, measured with this study's inner
    settings, that this study takes as its own instead of running it again."""
    gold_values: list[float] = field(default_factory=list)
    """Per seed, the gold objective (the spec's `objectives: [..., gold]`)."""

    @classmethod
    def of_results(cls, seeds: Sequence[InnerResult]) -> TrialRecord:
        """What a trial's inner runs (one a seed, in seed order) measured: the first error
        if one failed; else each seed's value, curve and steps, their standard error and
        mean final metrics, and the first seed's samples. Where each ran either way."""
        placements = [_placement(r) for r in seeds if r.host]  # a lost worker left none
        errors = [r.error for r in seeds if r.error]
        if errors:
            return cls(failed_for=errors[0], placements=placements)
        values = [float(r.value) for r in seeds]
        return cls(
            seed_values=values,
            stderr=stderr(values),
            curves=[r.curve for r in seeds],
            final=_mean_metrics([r.final for r in seeds]),
            samples=seeds[0].samples,
            sample_credits=seeds[0].sample_credits,
            sample_credits_note=seeds[0].sample_credits_note,
            placements=placements,
            steps=[r.steps for r in seeds],
        )

    def to_user_attrs(self) -> dict[str, Any]:
        """The attributes this record sets (those that differ from an empty record)."""
        empty = asdict(TrialRecord())
        attrs = {k: v for k, v in asdict(self).items() if v != empty[k]}
        if "curves" in attrs:  # JSON's keys are strings: every storage then reads the same
            attrs["curves"] = [{str(step): m for step, m in c.items()} for c in attrs["curves"]]
        return attrs

    @classmethod
    def from_trial(cls, trial: FrozenTrial) -> TrialRecord:
        return cls.from_attrs(trial.user_attrs)

    @classmethod
    def from_attrs(cls, user_attrs: dict[str, Any]) -> TrialRecord:
        """The record of a trial's user attributes (a live `optuna.Trial`'s too)."""
        kept = {k: v for k, v in user_attrs.items() if k in _RECORD_FIELDS}
        if "curves" in kept:
            kept["curves"] = [{int(step): m for step, m in c.items()} for c in kept["curves"]]
        return cls(**kept)

    @staticmethod
    def progress_key(seed_index: int) -> str:
        """The attribute in which seed `seed_index` keeps its evaluations as it goes: one per
        seed, so that seeds running side by side never overwrite each other's."""
        return f"progress_seed{seed_index}"

    @staticmethod
    def progress(user_attrs: dict[str, Any], seeds: int) -> list[dict[int, float]]:
        """Each seed's held-out evaluations so far, step -> value (JSON keeps the steps as
        strings)."""
        kept = [user_attrs.get(TrialRecord.progress_key(k), {}) for k in range(seeds)]
        return [{int(step): float(v) for step, v in seed.items()} for seed in kept]


_RECORD_FIELDS = frozenset(f.name for f in fields(TrialRecord))
WARM = "warm_start"
"""`TrialRecord.warm_start`'s attribute (tests/service/test_tuning_warm.py reads it back)."""


def own_complete(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """The completed trials this study measured (reused control arms included): what counts
    toward its budget and may be its incumbent. Warm-start copies only seed the sampler."""
    # One attribute read, not a whole record: every page asks this of every trial.
    return [t for t in trials if t.state == TrialState.COMPLETE and not t.user_attrs.get(WARM)]


def stderr(values: list[float]) -> float:
    """The standard error of the mean of `values`; NaN for fewer than 2 or a non-finite one."""
    if len(values) < 2 or not all(math.isfinite(v) for v in values):  # stdev raises on NaN
        return float("nan")
    return statistics.stdev(values) / math.sqrt(len(values))


def _mean_metrics(rows: list[dict[str, float]]) -> dict[str, float]:
    """The mean of each metric every row has."""
    if len(rows) == 1:
        return rows[0]
    keys = set.intersection(*(set(r) for r in rows))
    return {k: statistics.fmean(r[k] for r in rows) for k in sorted(keys)}


def _placement(result: InnerResult) -> dict[str, Any]:
    """Where an inner run ran, as a trial keeps it."""
    return {
        "seed_index": result.seed_index,
        "host": result.host,
        "node": result.node,
        "devices": result.devices,
        "resumed_from": result.resumed_from,
    }


def write(trial: Any, record: TrialRecord) -> None:
    """Set `record`'s attributes on an Optuna `Trial` (anything with `set_user_attr`)."""
    for key, value in record.to_user_attrs().items():
        trial.set_user_attr(key, value)


def write_stored(storage: Any, trial_id: int, record: TrialRecord) -> None:
    """Set `record`'s attributes on a trial through Optuna's storage, where a process has
    no `Trial` of it (a worker, a coordinator taking a study over)."""
    for key, value in record.to_user_attrs().items():
        storage.set_trial_user_attr(trial_id, key, value)


def sparse_arm(complete: Sequence[FrozenTrial]) -> FrozenTrial | None:
    """The pure-sparse control arm, the baseline."""
    return next((t for t in complete if TrialRecord.from_trial(t).label == CONTROL_SPARSE), None)
