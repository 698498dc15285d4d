"""What the API returns. A request body that creates a study is the study spec itself
(`StudyCreate` in the OpenAPI document is `service.tuning.spec.model.StudySpec`)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel

from service.public import Public
from service.store.models import StudyStatus
from service.tuning.study.verdict import Estimate

Status = StudyStatus
"""A study's status (`service.store.models.StudyStatus`; an enum in the OpenAPI document)."""


# Times carry their zone, as RFC 3339 asks: the service's tables keep naive UTC, Optuna
# keeps naive local time (`datetime.now()`).
UtcTime = Annotated[datetime, AfterValidator(lambda t: t if t.tzinfo else t.replace(tzinfo=UTC))]
LocalTime = Annotated[datetime, AfterValidator(lambda t: t if t.tzinfo else t.astimezone())]


class StudySummary(Public):
    name: str
    status: Status
    owner: str
    """Who submitted it, as their client said (`shapetune submit --owner`); "" if unsaid."""
    message: str
    """Why the study failed or stopped, or what happens next."""
    budget: int
    """Completed trials the study runs to."""
    done: int
    """Completed trials so far."""
    best_value: float | None
    """The incumbent's objective: the best mean over seeds so far."""
    sparse_value: float | None
    """The pure-sparse control arm's objective, the baseline."""
    gain: Estimate | None = None
    """best - sparse over the study's own seeds, paired by seed (null while either is
    missing, or when sparse is the best): optimistic, since these seeds also picked the best
    (the re-evaluation on fresh seeds is not)."""
    coordinator: str | None
    """Who drives the study now (null when nobody holds a live lease)."""
    coordinator_lost: str | None
    """A coordinator whose lease lapsed while the study was running: it died, and a
    running service takes the study over (or `shapetune resume NAME` does)."""
    created_at: UtcTime
    updated_at: UtcTime


class StudiesPublic(Public):
    data: list[StudySummary]
    count: int
    """Studies matching the filter, on every page."""


class Arm(Public):
    """A trial as a point of comparison: a control arm, or the incumbent."""

    trial: int
    label: str
    weights: dict[str, float] | None
    knobs: dict[str, float]
    value: float | None
    """Mean objective over the trial's seeds."""
    stderr: float | None
    """Standard error of that mean (null with one seed)."""
    seed_values: list[float | None]
    state: str


class ReevaluatedArm(Estimate):
    trial: int
    label: str
    """"best shape", "challenger", or the sparse baseline's label."""
    weights: dict[str, float] | None
    knobs: dict[str, float]
    study_value: float | None
    """The trial's mean over the study's own seeds, for comparison."""
    study_stderr: float | None
    left_after: int | None = None
    """The fresh seeds after which it left the race, behind the leader beyond noise (null:
    it ran to the end)."""
    versus_sparse: Estimate | None = None
    """It minus the sparse baseline on the seeds both ran, paired by seed, at the race's
    level (null for the baseline itself)."""


class Reevaluation(Public):
    """The best shapes raced against pure sparse on seeds no trial used, in rounds, paired by
    seed (`shapetune reevaluate NAME`): estimates free of the luck that picked them."""

    objective: str
    seeds: list[int]
    """The fresh seeds run so far; arm k's `values` are in this order."""
    arms: list[ReevaluatedArm]
    """The best shape first, then the sparse baseline, then the other challengers."""
    difference: Estimate | None
    """Best shape minus sparse, paired by seed (null in a record kept before races)."""
    finished_at: datetime
    level: float = 0.95
    """The level of `difference`'s interval: above 0.95 when the race had several looks or
    challengers, so that all of its verdicts hold together at 95 %."""
    margin: float | None = None
    """The equivalence margin in objective units (null: none was set)."""
    outcome: Literal["beats", "loses", "equivalent", "undecided", ""] = ""
    more_seeds: int | None = None
    """Undecided: about how many more seeds would decide it at the observed spread."""
    max_seeds: int | None = None
    done: bool = True
    """False while the race is still running (or was interrupted: run it again)."""
    verdict: str = ""
    """The verdict in one sentence: the best shape beats pure sparse, sparse beats it, they
    are equivalent within the margin, or undecided after N seeds and how many more would
    decide it."""


class StudyPublic(StudySummary):
    spec: dict[str, Any]
    direction: Literal["maximize", "minimize"]
    """Which way the objective is better."""
    counts: dict[str, int]
    """Trials by Optuna state (COMPLETE, RUNNING, FAIL, PRUNED, WAITING)."""
    running: int
    failed: int
    best: Arm | None
    """The incumbent: the best mean over seeds."""
    sparse: Arm | None
    """The pure-sparse control arm, the baseline the shaping is meant to beat."""
    control_arms: list[Arm]
    importance: dict[str, float] = {}
    """PED-ANOVA importance of each searched parameter for the first objective (Optuna;
    sums to 1), once the study has enough completed trials; u<i> (method) is the share of
    the weight left that method i takes (the stick-breaking coordinate)."""
    pareto_front: list[int] = []
    """With a second objective: the completed feasible trials no other one beats on both
    objectives, by number (the incumbent is the best of them on the first)."""
    reevaluation: Reevaluation | None
    """The latest re-evaluation on fresh seeds, if one was run."""


class TrialSummary(Public):
    number: int
    state: str
    label: str
    weights: dict[str, float] | None
    knobs: dict[str, float]
    value: float | None
    stderr: float | None
    seed_values: list[float | None]
    versus_sparse: Estimate | None = None
    """It minus the pure-sparse control, paired by seed, with its 95 % interval (null for
    the control itself, an unfinished trial, or seeds that do not pair)."""
    failed_for: str
    """The trial's own error, if it failed."""
    stopped_for: str
    """Why it stopped for no fault of its own (a cancel, a coordinator that died)."""
    warm_start: str = ""
    """"study#number" this trial copies from an earlier study to seed the sampler: it does
    not count toward the budget and is never the incumbent."""
    reused_from: str = ""
    """"study#number" of the earlier study's control arm this study took as its own."""
    gold: float | None = None
    """The gold objective (mean over seeds), when the spec's objectives ask for it."""
    feasible: bool = True
    """Whether it kept the spec's constraints (kl_max); an infeasible trial is never best."""
    steps: list[int] = []
    """PPO steps each seed ran, its compute (empty until the trial is told)."""
    pruned_at: int | None = None
    """The step at which the pruner stopped the trial (null: not pruned)."""
    started: LocalTime | None
    finished: LocalTime | None
    seconds: float | None
    """Wall time from start to finish (null while it runs)."""


class Placement(Public):
    """Where one inner run of a trial ran."""

    seed_index: int
    host: str
    node: str
    """The Ray node's id ("" when it ran outside Ray)."""
    devices: str
    """CUDA_VISIBLE_DEVICES as the run saw it: the GPUs Ray gave it ("" for none)."""
    resumed_from: int = 0
    """The step of the checkpoint it continued from: a retry after a lost worker or node
    goes on from there (0: it started afresh)."""


class TrialsPublic(Public):
    data: list[TrialSummary]
    count: int


class StudyCurves(Public):
    """What plots of a whole study need, per trial number."""

    params: dict[int, dict[str, Any]]
    """What the sampler proposed."""
    curves: dict[int, list[tuple[int, float | None]]]
    """(step, held-out RM reward, mean over seeds), at most 100 points per trial."""


class MethodCredits(Public):
    method: str
    weight: float
    """The method's weight in the trial's mix (0 for a method it did not use)."""
    credits: list[float | None]
    """One per response token."""
    rm_rows: int
    """Reward-model rows the method evaluated for this response."""
    seconds: float
    offset: float | None
    """R - sum(credits): the prompt-only part of the score the method leaves out."""


class SampleCredits(Public):
    """A sample response and its per-token credits under each method and the trial's mix."""

    prompt: str
    response: str
    tokens: list[str]
    """The response in the policy's tokens, decoded one by one."""
    score: float | None
    """The reward model's score R of prompt + response."""
    methods: list[MethodCredits]
    shaped: list[float | None]
    """sum_k weight_k * credits_k per token: the reward the trial trained with, before KL."""


class Artifact(Public):
    """A file an inner run left on its worker."""

    trial_number: int
    seed_index: int
    """The seed's place among the trial's seeds (0 for the study's first seed)."""
    kind: Literal["checkpoint", "result"]
    """checkpoint: policy, value head, optimizer and RNG states (`torch.load` it);
    result: the run's metrics and samples as JSON."""
    host: str
    """The worker's host name: the path is on that machine."""
    path: str
    bytes: int
    created_at: UtcTime


class ArtifactsPublic(Public):
    data: list[Artifact]
    count: int


class TrialPublic(TrialSummary):
    params: dict[str, Any]
    """What the sampler proposed (weights are derived from these)."""
    curves: list[dict[int, dict[str, float | None]]]
    """Per seed: evaluation step -> held-out metrics."""
    intermediate_values: dict[int, float | None]
    """What the pruner saw, per step."""
    final: dict[str, float | None]
    """Metrics at the end of the inner runs (mean over seeds), but the costs."""
    cost: dict[str, float | None]
    """The `cost/` metrics of the end: RM rows per response, attribution and train time."""
    samples: list[str]
    """Sample responses of the first seed at its last evaluation."""
    sample_credits: list[SampleCredits]
    """The samples credited token by token (by the first seed's worker, as it finished)."""
    sample_credits_note: str
    """Why `sample_credits` is empty, when it is."""
    artifacts: list[Artifact]
    """The files its inner runs left (their checkpoints hold the trained policies)."""
    placements: list[Placement]
    """Where each of its inner runs ran."""


class StudyAction(Public):
    name: str
    status: Status
    """The study's status after the request."""


class Health(Public):
    """Open to anyone who can connect, so it names nothing: no database, host or study."""

    status: Literal["ok"]
    database: Literal["ok"]
    """The study database answered (a 503 otherwise)."""
    coordinator: bool
    """This process drives studies (false for an API-only process)."""


class ErrorMessage(BaseModel):
    detail: str


class SpecRejected(BaseModel):
    detail: str
    problems: list[str]
    """One line per offending field."""
