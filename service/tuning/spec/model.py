"""The study spec: what a user submits, validated in one place (YAML or JSON).

A spec that fails validation is refused with every offending field named, before anything
is written. The JSON schema users edit against is `docs/study-spec.schema.json`
(`shapetune schema` prints it).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import replace
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from service.redaction import safe_url
from service.store.db import StoreError, check_url
from service.tuning.spec.text import MAX_BYTES, SpecTextError, cut, load_yaml, shorten
from shaping.attribution import ATTRIBUTORS
from shaping.attribution.options import Real
from trainers.config import ConfigError, TrainConfig
from trainers.tasks import TASKS

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
TUNABLE_KNOBS = ("kl_coef", "lr", "clip_coef", "temperature", "vf_coef", "gae_lambda")
"""PPO hyper-parameters a study may search beside the weights; and any numeric option of a
method, named METHOD.OPTION (`amortized.prior`): see `method_knob`."""
STUDY_OWNED = {
    "task": "the spec's `task`",
    "seed": "from the spec's `seed`, one per inner seed",
    "run_dir": "a folder per trial under the home, for checkpoints",
}
"""Inner-run fields the study sets itself; a spec that sets them would be ignored."""


MAX_PROBLEMS = 40
"""Problems listed in one error; a spec with more is mostly wrong, and the rest are counted."""


class SpecError(ValueError):
    """A spec that cannot run; `problems` holds one line per offending field."""

    def __init__(self, problems: list[str]) -> None:
        shown = problems[:MAX_PROBLEMS]
        if len(problems) > MAX_PROBLEMS:
            shown.append(f"... and {len(problems) - MAX_PROBLEMS} more")
        super().__init__("invalid study spec:\n" + "\n".join(f"  - {p}" for p in shown))
        self.problems = shown


class _Strict(BaseModel):
    # strict: `seeds: true` is not 1 and `"3"` is not 3; no NaN or infinity anywhere.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class TaskSpec(_Strict):
    name: str = Field("imdb-sentiment", description="A registered task (`shapetune tasks list`).")
    options: dict[str, Any] = Field(
        default_factory=dict, description='The task\'s options, e.g. {"size": "tiny"}.'
    )

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in TASKS:
            raise ValueError(f"unknown task {v!r}; choose one of {sorted(TASKS)}")
        return v


class Knob(_Strict):
    low: float = Field(description="Smallest value searched.")
    high: float = Field(description="Largest value searched.")
    log: bool = Field(False, description="Search on a log scale (both bounds > 0).")

    @model_validator(mode="after")
    def _range(self) -> Knob:
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.low < self.high):
            raise ValueError(f"need finite low < high; got low={self.low}, high={self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-scale range needs low > 0; got low={self.low}")
        return self


class Resources(_Strict):
    cpus: float = Field(1.0, gt=0, le=1024, description="CPUs per inner run (Ray num_cpus).")
    gpus: float = Field(0.0, ge=0, le=64, description="GPUs per inner run (Ray num_gpus).")
    torch_threads: int = Field(1, ge=0, le=1024, description="torch threads per inner run.")
    workers: int = Field(
        0, ge=0, le=1024, description="Inner runs at once; 0 = as many as the resources allow."
    )


class Constraints(_Strict):
    kl_max: float = Field(
        gt=0,
        description="Largest held-out KL from the reference policy at the end of the inner "
        "run (eval/kl, mean over seeds): a trial above it is infeasible, never the incumbent, "
        "and the sampler learns to avoid its region (Optuna constraints).",
    )


class Margin(_Strict):
    fraction: float = Field(
        0.2,
        gt=0,
        le=10,
        description="A shape within this fraction of pure sparse's own gain over the initial "
        "policy (its objective minus the initial policy's, on the fresh seeds) is equivalent "
        "to sparse: a difference too small to act on.",
    )
    absolute: float | None = Field(
        None,
        gt=0,
        description="The margin in the objective's own units instead of a fraction.",
    )


class StudySpec(_Strict):
    """One tuning study: the shaping weights (and optional PPO knobs) Optuna searches, the
    inner run that scores each proposal, and how long to search."""

    name: str = Field(pattern=NAME_PATTERN, description="Unique study name.")
    task: TaskSpec = Field(default_factory=lambda: TaskSpec())
    methods: list[str] = Field(
        min_length=1,
        max_length=len(ATTRIBUTORS),
        description="Methods whose mixing weights are searched, on the simplex.",
    )
    knobs: dict[str, Knob] = Field(
        default_factory=dict,
        description=f"Extra settings to search: PPO's {list(TUNABLE_KNOBS)}, or a method's "
        "numeric option as METHOD.OPTION (e.g. amortized.prior).",
    )
    inner: dict[str, Any] = Field(
        default_factory=dict,
        description="Inner-run settings (the fields of trainers.config.TrainConfig: steps, "
        "ppo, shaping.options, eval_interval, ...), checked by building one.",
    )
    seeds: int = Field(2, ge=1, le=64, description="Inner runs per trial; value = their mean.")
    budget: int = Field(ge=1, le=100_000, description="Total completed trials of the study.")
    objective: Literal["auc", "final", "steps_to_target"] = Field(
        "auc",
        description="auc: held-out reward averaged over training (learning fast); "
        "final: at the end; steps_to_target: steps to reach `target` (fewer is better).",
    )
    target: float | None = Field(None, description="Held-out RM reward for steps_to_target.")
    objectives: list[Literal["auc", "final", "gold"]] = Field(
        default_factory=list,
        description="A second objective beside `objective`: [auc, gold] or [final, gold] "
        "(the first must be `objective`). gold: the same measure of the task's gold judge, "
        "which the policy never trained on; reward hacking shows as RM up and gold flat. The "
        "study page shows the Pareto front; the incumbent is the best on the first objective "
        "among Pareto-optimal feasible trials. Empty: `objective` alone.",
    )
    constraints: Constraints | None = Field(
        None, description="Limits a trial must keep to count as feasible: {kl_max: X}."
    )
    sampler: Literal["gp", "tpe", "random", "qnei"] = Field(
        "gp",
        description="Outer sampler. gp: Optuna's GPSampler (one learned noise level); qnei: "
        "BoTorch's qNEI (the botorch extra), one objective, no constraints.",
    )
    noise: Literal["known", "learned"] = Field(
        "known",
        description="qnei only. known: the GP fits each trial's own noise, the squared "
        "standard error of its mean over seeds (shrunk towards the pooled seed variance), so "
        "arms measured with more seeds count as better known; learned: one noise level for "
        "all, fitted (as gp does).",
    )
    startup_trials: int = Field(
        8,
        ge=0,
        le=10_000,
        description="Trials (control arms included) before the model-based "
        "sampler takes over; random points until then.",
    )
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Study seed (samplers, inner runs).")
    control_arms: bool = Field(
        True, description="Run pure sparse and each pure method first, as baselines."
    )
    warm_start: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="Earlier studies in the same store whose completed trials seed the "
        "sampler (they do not count toward the budget and are never the incumbent). They "
        "must have the same task, methods (in the same order), knobs, objective(s) and "
        "target. Their control arms measured with the same inner settings, seeds and seed "
        "are reused as this study's own, not rerun (see rerun_control_arms).",
    )
    rerun_control_arms: bool = Field(
        False,
        description="With warm_start: run every control arm again, even one a warm-start "
        "study already measured with the same inner settings.",
    )
    pruner: Literal["none", "median", "hyperband"] = Field(
        "none",
        description="Stop unpromising trials part-way. A trial's value at a step is the mean "
        "of its seeds' held-out rewards there, judged once all its seeds reached the step; a "
        "pruned trial stops all its seeds and does not count toward the budget. median: "
        "behind the median of completed trials at that step; hyperband: successive halving "
        "in brackets, each rung keeping its best third. Resources are the inner run's PPO "
        "steps: the first rung is inner.eval_interval, the largest inner.steps (so "
        "eval_interval must be below steps); a run that finished is never pruned.",
    )
    margin: Margin = Field(
        default_factory=lambda: Margin(),
        description="The equivalence margin of the re-evaluation's verdict "
        "(`shapetune reevaluate`): within it, a shape and pure sparse are equivalent.",
    )
    max_failures: int = Field(
        3, ge=1, le=1000, description="Trials that may fail for real errors before the study stops."
    )
    storage: str | None = Field(
        None,
        description="SQLAlchemy URL of the study store; default SQLite under SHAPETUNE_HOME. "
        "PostgreSQL: postgresql+psycopg://user@host/db.",
    )
    executor: Literal["ray", "inline"] = Field("ray", description="Where inner runs execute.")
    resources: Resources = Field(default_factory=lambda: Resources())

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: list[str]) -> list[str]:
        unknown = sorted(set(v) - set(ATTRIBUTORS))
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; choose from {sorted(ATTRIBUTORS)}")
        if len(set(v)) != len(v):
            raise ValueError(f"methods are listed twice: {v}")
        return v

    @field_validator("warm_start")
    @classmethod
    def _warm_start(cls, v: list[str]) -> list[str]:
        bad = [name for name in v if not re.fullmatch(NAME_PATTERN, name)]
        if bad:
            raise ValueError(f"not study names: {bad}")
        if len(set(v)) != len(v):
            raise ValueError(f"studies are listed twice: {v}")
        return v

    @field_validator("knobs")
    @classmethod
    def _knobs(cls, v: dict[str, Knob]) -> dict[str, Knob]:
        unknown = sorted(k for k in v if k not in TUNABLE_KNOBS and method_knob(k) is None)
        if unknown:
            raise ValueError(
                f"unknown knob(s) {unknown}; choose from {list(TUNABLE_KNOBS)} or a method's "
                "numeric option as METHOD.OPTION (e.g. amortized.prior)"
            )
        return v

    @field_validator("storage")
    @classmethod
    def _storage(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                check_url(v)
            except StoreError as e:
                raise ValueError(str(e)) from None
        return v

    @model_validator(mode="after")
    def _consistent(self) -> StudySpec:
        problems = []  # all of them at once, one per line
        if self.control_arms and "sparse" not in self.methods:
            problems.append(
                "control arms compare against pure sparse: add 'sparse' to methods, "
                "or set control_arms: false"
            )
        if self.objective == "steps_to_target" and self.target is None:
            problems.append("objective 'steps_to_target' needs a `target` reward")
        if self.pruner != "none" and self.objective == "steps_to_target":
            problems.append("a pruner compares reward curves; use it with objective auc or final")
        if self.noise != "known" and self.sampler != "qnei":
            problems.append(
                f"noise: {self.noise} is an option of sampler qnei ({self.sampler} learns its "
                "own noise level); remove noise, or set sampler: qnei"
            )
        if self.sampler == "qnei" and (self.objectives or self.constraints):
            problems.append(
                "sampler qnei models one objective without constraints; use sampler gp with "
                "objectives or constraints"
            )
        if self.name in self.warm_start:
            problems.append(f"warm_start names this study ({self.name!r}); remove it")
        if self.objectives and self.pruner != "none":
            problems.append(
                "a pruner judges one objective (Optuna prunes no multi-objective study); "
                "leave objectives out or set pruner: none"
            )
        if self.objectives and self.objectives != [self.objective, "gold"]:
            problems.append(  # no [...] of our own: the CLI's rich markup would eat it
                f"objectives {self.objectives}: list the study's objective ({self.objective}) "
                "first, then gold; or leave objectives out"
            )
        for knob in self.knobs:
            where = f"shaping.options.{knob}" if method_knob(knob) else f"ppo.{knob}"
            if where in _flatten(self.inner):
                problems.append(f"knob {knob!r} is searched; remove inner.{where}")
        if isinstance(self.inner.get("shaping"), dict) and "weights" in self.inner["shaping"]:
            problems.append("inner.shaping.weights is what the study searches; remove it")
        for part in ("ppo", "shaping"):
            if not isinstance(self.inner.get(part, {}), dict):
                problems.append(
                    f"inner.{part} is a mapping of its fields, not {self.inner[part]!r}"
                )
        for key, owner in STUDY_OWNED.items():
            if key in self.inner:
                problems.append(f"inner.{key} is set by the study ({owner}); remove it")
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def stored(self) -> dict[str, Any]:
        """The spec as the study keeps it: plain data, the storage URL's password left out
        (the study lives in that database, and whoever reads it must not learn it)."""
        data = self.model_dump(mode="json")
        if data["storage"] is not None:
            data["storage"] = safe_url(data["storage"])
        return data

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A copy, without the `base` the update may change (built again when asked)."""
        copied = super().model_copy(update=update, deep=deep)
        copied.__dict__.pop("base", None)
        return copied

    @cached_property
    def base(self) -> TrainConfig:
        """The inner run as the spec sets it, typed and checked by the trainer's own config,
        built once: the methods weighted alike, no knob applied, the study's seed. Raises
        `ConfigError` for an inner run the trainer refuses (`parse_spec` reports it)."""
        inner = json.loads(json.dumps(self.inner))  # a deep copy of plain data
        inner.setdefault("torch_threads", self.resources.torch_threads)
        uniform = dict.fromkeys(self.methods, 1.0 / len(self.methods))
        shaping = {**inner.pop("shaping", {}), "weights": uniform}
        return TrainConfig.from_dict(
            {
                **inner,
                "task": {"name": self.task.name, "options": self.task.options},
                "shaping": shaping,
                "seed": self.seed,
            }
        )

    def train_config(
        self,
        weights: dict[str, float],
        knobs: dict[str, float],
        seed: int,
        run_dir: Path | None = None,
    ) -> TrainConfig:
        """The inner run of one trial and seed (in `run_dir`, for a study's runs): `base`
        with its weights, knobs and seed."""
        base = self.base
        options = {method: dict(given) for method, given in base.shaping.options.items()}
        for knob, value in knobs.items():
            if (named := method_knob(knob)) is not None:
                method, option = named
                options.setdefault(method, {})[option] = value
        ppo: dict[str, Any] = {k: v for k, v in knobs.items() if k in TUNABLE_KNOBS}
        return replace(
            base,
            shaping=replace(base.shaping, weights=weights, options=options),
            ppo=replace(base.ppo, **ppo),
            seed=seed,
            run_dir=None if run_dir is None else str(run_dir),
        )


def method_knob(name: str) -> tuple[str, str] | None:
    """(method, option) when `name` is METHOD.OPTION for a numeric (real) option of a
    registered method; None otherwise."""
    method, _, option = name.partition(".")
    declared = ATTRIBUTORS[method].options if method in ATTRIBUTORS else {}
    return (method, option) if isinstance(declared.get(option), Real) else None


def _flatten(data: dict[str, Any], prefix: str = "") -> set[str]:
    keys = set()
    for k, v in data.items():
        keys.add(prefix + k)
        if isinstance(v, dict):
            keys |= _flatten(v, prefix + k + ".")
    return keys


def parse_spec(data: Any) -> StudySpec:
    """Validate plain data as a spec; every problem is reported at once as a `SpecError`.

    The inner run is checked by the trainer's own config, as each trial will build it, at
    both ends of every searched knob: a range the trainer refuses anywhere is refused here.
    What needs the task itself (its files, its models' sizes, the device) is checked by
    `service.tuning.study.admission.admit`."""
    if not isinstance(data, dict):
        raise SpecError([f"a spec is a mapping of fields; got {type(data).__name__}"])
    try:
        spec = StudySpec.model_validate(data)
    except ValidationError as e:
        raise SpecError([line for err in e.errors() for line in _describe(err)]) from None
    problems = _corner_errors(spec) or _pruner_errors(spec)
    if problems:
        raise SpecError(problems)
    return spec


def same_study(stored: dict[str, Any], spec: StudySpec) -> bool:
    """Whether a stored spec and `spec` describe the same study, defaults filled in: a spec
    stored by an older version, without a field added since, is still the same study."""
    try:
        return parse_spec(stored).stored() == spec.stored()
    except SpecError:
        return False


def corner_configs(spec: StudySpec) -> list[TrainConfig]:
    """The inner runs at the low and the high end of every knob (the weights do not change
    what the trainer accepts), to check each as the trainer will build it; raises
    `ConfigError` for the first that cannot be built. What no knob changes (sizes, steps)
    is read off `spec.base`."""
    weights = dict.fromkeys(spec.methods, 1.0 / len(spec.methods))
    low = {k: v.low for k, v in spec.knobs.items()}
    high = {k: v.high for k, v in spec.knobs.items()}
    ends = [low, high] if spec.knobs else [low]
    return [spec.train_config(weights, knobs, spec.seed) for knobs in ends]


def _corner_errors(spec: StudySpec) -> list[str]:
    try:
        corner_configs(spec)
    except ConfigError as e:
        return [f"inner: {cut(str(e))}"]
    except (TypeError, AttributeError) as e:
        return [f"inner: not a mapping of TrainConfig fields ({cut(str(e))})"]
    return []


def _pruner_errors(spec: StudySpec) -> list[str]:
    config = spec.base
    if spec.pruner != "none" and config.eval_interval >= config.steps:
        return [
            f"pruner {spec.pruner!r} judges trials at their evaluations before the last step, "
            f"but inner.eval_interval={config.eval_interval} is not below inner.steps="
            f"{config.steps}; lower eval_interval, or set pruner: none"
        ]
    return []


def _describe(err: Any) -> list[str]:
    where = ".".join(str(p) for p in err["loc"]) or "spec"
    message = cut(str(err["msg"]).removeprefix("Value error, "))
    if err["type"] == "extra_forbidden":
        message = "unknown field"
    elif err["type"] == "missing":
        message = "required field is missing"
    given = err.get("input")
    if isinstance(given, str) and "://" in given:
        given = safe_url(given)
    shown = (
        "" if err["type"] == "missing" or isinstance(given, dict) else f" (got {shorten(given)})"
    )
    return [f"{where}: {line}{shown}" for line in message.split("\n")]


def load_spec(path: Path) -> StudySpec:
    """Read a YAML or JSON spec file (bounded: `service.tuning.spec.text`)."""
    try:
        if not path.is_file():
            raise SpecError([f"spec file {str(path)!r} does not exist"])
        with path.open("rb") as f:
            raw = f.read(MAX_BYTES + 1)
        data = load_yaml(raw.decode("utf-8"), str(path))
    except SpecTextError as e:
        raise SpecError([str(e)]) from None
    except UnicodeDecodeError as e:
        raise SpecError([f"{path}: not UTF-8 text ({e.reason} at byte {e.start})"]) from None
    except OSError as e:
        raise SpecError([f"spec file {str(path)!r} cannot be read: {e.strerror}"]) from None
    return parse_spec(data)


def json_schema() -> dict[str, Any]:
    """The spec's JSON schema, `inner` typed by the trainer's own config (less what the
    study sets: the task, the seed, the run's folder and the weights), so that an editor
    checks an inner run's fields as the trainer will."""
    schema = StudySpec.model_json_schema()
    trainer = TypeAdapter(TrainConfig).json_schema()
    parts = trainer.pop("$defs")
    del parts["TaskConfig"]  # the spec's `task`
    parts["ShapingConfig"]["properties"].pop("weights")
    for key in STUDY_OWNED:
        trainer["properties"].pop(key)
    for part in (trainer, *parts.values()):
        part["additionalProperties"] = False
    # Named apart from the spec's own definitions (its TaskSpec is not the trainer's).
    renamed = json.loads(json.dumps([trainer, parts]).replace('"#/$defs/', '"#/$defs/Inner'))
    schema["$defs"].update({f"Inner{name}": part for name, part in renamed[1].items()})
    given = schema["properties"]["inner"]
    schema["properties"]["inner"] = {
        **renamed[0],
        **{k: given[k] for k in ("title", "description", "default") if k in given},
    }
    return schema
