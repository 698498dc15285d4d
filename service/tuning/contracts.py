"""What crosses a boundary in a study, as typed values.

`InnerJob` is what a coordinator hands a worker and `InnerResult` what it gets back: frozen
dataclasses of plain data, so Ray pickles them to any node. `TrialRecord` owns every user
attribute a trial keeps in Optuna's storage: the loop writes them through it and the read
model reads them through it, so no key is spelled twice.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from optuna.trial import FrozenTrial


def control_label(method: str) -> str:
    """The label of the control arm that gives `method` all the weight."""
    return f"pure {method}"


CONTROL_SPARSE = control_label("sparse")
"""The pure-sparse control arm, the baseline every shape is compared with."""


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
    config: dict[str, Any]
    """`TrainConfig.to_dict()` of the run."""
    home: str
    run_dir: str
    """Named by the trial's parameters: a retried trial continues from its checkpoint."""
    heartbeat_s: float
    objective: str
    target: float | None
    prune: bool
    """Report each evaluation to the study's pruner and stop when it says so."""
    credit: bool
    """Credit the sample responses token by token (`service.tuning.credits`)."""
    gpus: float = 0.0
    """GPUs the executor reserves for the run (the spec's resources.gpus): the run must
    then find CUDA, on the device Ray gave it."""


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
    node: str = ""
    """The Ray node that ran it ("" outside Ray)."""
    devices: str = ""
    """CUDA_VISIBLE_DEVICES as the run saw it: the GPUs Ray gave it ("" for none)."""
    resumed_from: int = 0
    """The step of the checkpoint it continued from (0: it started afresh)."""
    """The files it left on `host`, for the study's artifacts index."""
    error: str | None = None
    value: float = float("nan")
    curve: dict[str, dict[str, float]] = field(default_factory=dict)
    """Evaluation step (as a string: JSON keys) -> held-out metrics."""
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
    curves: list[dict[str, dict[str, float]]] = field(default_factory=list)
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

    def to_user_attrs(self) -> dict[str, Any]:
        """The attributes this record sets (those that differ from an empty record)."""
        empty = asdict(TrialRecord())
        return {k: v for k, v in asdict(self).items() if v != empty[k]}

    @classmethod
    def from_trial(cls, trial: FrozenTrial) -> TrialRecord:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in trial.user_attrs.items() if k in known})


def placement(result: InnerResult) -> dict[str, Any]:
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
