"""The study spec: what a user submits, validated in one place (YAML or JSON).

A spec that fails validation is refused with every offending field named, before anything
is written. The JSON schema users edit against is `docs/study-spec.schema.json`
(`shapetune schema` prints it).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from shaping.attribution import ATTRIBUTORS
from trainers.config import ConfigError, TrainConfig
from trainers.tasks import TASKS

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
TUNABLE_KNOBS = ("kl_coef", "lr", "clip_coef", "temperature", "vf_coef", "gae_lambda")
"""PPO hyper-parameters a study may search beside the weights."""
SAMPLERS = ("gp", "tpe", "random", "qnei")
STUDY_OWNED = {
    "task": "the spec's `task`",
    "seed": "from the spec's `seed`, one per inner seed",
    "run_dir": "a folder per trial under the home, for checkpoints",
}
"""Inner-run fields the study sets itself; a spec that sets them would be ignored."""


class SpecError(ValueError):
    """A spec that cannot run; `problems` holds one line per offending field."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid study spec:\n" + "\n".join(f"  - {p}" for p in problems))
        self.problems = problems


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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
        default_factory=dict, description=f"Extra PPO settings to search: {list(TUNABLE_KNOBS)}."
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
    sampler: Literal["gp", "tpe", "random", "qnei"] = Field("gp", description="Outer sampler.")
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
    pruner: Literal["none", "median"] = Field(
        "none", description="Stop unpromising trials early (needs seeds = 1)."
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

    @field_validator("knobs")
    @classmethod
    def _knobs(cls, v: dict[str, Knob]) -> dict[str, Knob]:
        unknown = sorted(set(v) - set(TUNABLE_KNOBS))
        if unknown:
            raise ValueError(f"unknown knob(s) {unknown}; choose from {list(TUNABLE_KNOBS)}")
        return v

    @field_validator("storage")
    @classmethod
    def _storage(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("sqlite:///", "postgresql")):
            raise ValueError(
                f"storage {v!r} is not a supported URL; use sqlite:///PATH or "
                "postgresql+psycopg://USER@HOST/DB"
            )
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
        if self.pruner != "none" and self.seeds != 1:
            problems.append(
                f"pruner {self.pruner!r} judges one curve per trial; set seeds: 1 or pruner: none"
            )
        for knob in self.knobs:
            if f"ppo.{knob}" in _flatten(self.inner):
                problems.append(f"knob {knob!r} is searched; remove inner.ppo.{knob}")
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

    def train_config(
        self, weights: dict[str, float], knobs: dict[str, float], seed: int
    ) -> TrainConfig:
        """The inner run of one trial and seed, as the trainer takes it."""
        inner = json.loads(json.dumps(self.inner))  # a deep copy of plain data
        shaping = {**inner.pop("shaping", {}), "weights": weights}
        ppo = {**inner.pop("ppo", {}), **knobs}
        inner.setdefault("torch_threads", self.resources.torch_threads)
        return TrainConfig.from_dict(
            {
                **inner,
                "task": {"name": self.task.name, "options": self.task.options},
                "shaping": shaping,
                "ppo": ppo,
                "seed": seed,
            }
        )


def _flatten(data: dict[str, Any], prefix: str = "") -> set[str]:
    keys = set()
    for k, v in data.items():
        keys.add(prefix + k)
        if isinstance(v, dict):
            keys |= _flatten(v, prefix + k + ".")
    return keys


def parse_spec(data: Any) -> StudySpec:
    """Validate plain data as a spec; every problem is reported at once as a `SpecError`."""
    if not isinstance(data, dict):
        raise SpecError([f"a spec is a mapping of fields; got {type(data).__name__}"])
    try:
        spec = StudySpec.model_validate(data)
    except ValidationError as e:
        raise SpecError([line for err in e.errors() for line in _describe(err)]) from None
    try:  # the inner run is checked by the trainer's own config, as it will be built
        first = dict.fromkeys(spec.methods, 1.0 / len(spec.methods))
        spec.train_config(first, {k: v.low for k, v in spec.knobs.items()}, spec.seed)
    except ConfigError as e:
        raise SpecError([f"inner: {e}"]) from None
    except (TypeError, AttributeError) as e:
        raise SpecError([f"inner: not a mapping of TrainConfig fields ({e})"]) from None
    return spec


def _describe(err: Any) -> list[str]:
    where = ".".join(str(p) for p in err["loc"]) or "spec"
    message = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        message = "unknown field"
    elif err["type"] == "missing":
        message = "required field is missing"
    given = err.get("input")
    shown = "" if err["type"] in ("missing",) or isinstance(given, dict) else f" (got {given!r})"
    return [f"{where}: {line}{shown}" for line in message.split("\n")]


def load_spec(path: Path) -> StudySpec:
    """Read a YAML or JSON spec file."""
    if not path.is_file():
        raise SpecError([f"spec file {str(path)!r} does not exist"])
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise SpecError([f"{path}: not valid YAML/JSON: {e}"]) from None
    return parse_spec(data)


def json_schema() -> dict[str, Any]:
    return StudySpec.model_json_schema()
