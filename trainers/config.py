"""The inner run as typed values: task, shaping, PPO hyper-parameters, run settings.

Every field is checked when the value is built; a bad one raises `ConfigError` naming the
field, the value given, and what would be valid.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from shaping.attribution import ATTRIBUTORS, check_method_options
from shaping.weights import check_weights
from trainers.tasks import TASKS, TaskError, check_task_options

CriticInit = Literal["policy", "reward_model"]
CRITIC_INITS = ("policy", "reward_model")
KL_ESTIMATORS = ("k1", "k3")
_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+|mps)$")


class ConfigError(ValueError):
    """An inner-run configuration that cannot run; the message names the field."""


def _check(ok: bool, name: str, value: Any, valid: str) -> None:
    if not ok:
        raise ConfigError(f"{name}={value!r} is invalid; {valid}")


def _integer(value: Any) -> bool:
    """An int that is no bool: from YAML, `steps: true` is a typo, not 1."""
    return isinstance(value, int) and not isinstance(value, bool)


def _positive_int(name: str, value: Any) -> None:
    _check(_integer(value) and value >= 1, name, value, "give an integer >= 1")


def _in_range(name: str, value: Any, low: float, high: float) -> None:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    ok = number and math.isfinite(value) and low <= value <= high
    _check(ok, name, value, f"give a number in [{low:g}, {high:g}]")


@dataclass(frozen=True)
class TaskConfig:
    name: str = "imdb-sentiment"
    """A registered task (`shapetune tasks list`)."""
    options: Mapping[str, Any] = field(default_factory=dict)
    """The task's own options, e.g. {"size": "tiny"}; checked when the task is built."""

    def __post_init__(self) -> None:
        _check(self.name in TASKS, "task.name", self.name, f"choose one of {sorted(TASKS)}")
        object.__setattr__(self, "options", dict(self.options))
        try:
            check_task_options(self.name, self.options)
        except TaskError as e:
            raise ConfigError(f"task.options: {e}") from e


@dataclass(frozen=True)
class ShapingConfig:
    weights: Mapping[str, float] = field(default_factory=lambda: {"sparse": 1.0})
    """{method: weight} on the simplex; methods with weight 0 cost nothing."""
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Per-method options, e.g. {"shapley": {"unit": "span", "permutations": 8}}. A method
    that takes a `seed` and is given none gets the run's seed."""
    rows_per_forward: int = 256
    """Reward-model rows per forward pass when attribution scores masked variants."""
    coalition_dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """The RM copy that scores masked variants (Shapley, SHAP, LIME, amortized's rows).
    "auto": bfloat16 where the hardware computes in it (CUDA with bf16, a CPU with AVX-512
    BF16 or AMX instructions: `shaping.precision`), float32 elsewhere, where bf16 is
    emulated and slower (8.8x on 2 AVX2 cores). bfloat16 moved token-Shapley credits by
    0.35 % (relative L2), against their 6.75 % sampling error at 8 permutations
    (bench/teacher_bench.py). The responses' own scores stay float32. A reward function
    that is no Hugging Face model is always scored in float32 under "auto"."""

    def __post_init__(self) -> None:
        weights = {str(k): float(w) for k, w in self.weights.items()}
        try:
            check_weights(weights, known=set(ATTRIBUTORS))
        except ValueError as e:
            raise ConfigError(f"shaping.weights: {e}") from e
        options = {str(k): dict(v) for k, v in self.options.items()}
        for method, opts in options.items():
            _check(
                method in ATTRIBUTORS,
                "shaping.options",
                method,
                f"options name a method; choose from {sorted(ATTRIBUTORS)}",
            )
            try:  # the values too, by the checks the method's constructor runs
                check_method_options(method, opts)
            except ValueError as e:
                raise ConfigError(f"shaping.options.{method}: {e}") from e
        _positive_int("shaping.rows_per_forward", self.rows_per_forward)
        _check(
            self.coalition_dtype in ("auto", "float32", "bfloat16"),
            "shaping.coalition_dtype",
            self.coalition_dtype,
            "choose auto, float32 or bfloat16",
        )
        object.__setattr__(self, "weights", weights)
        object.__setattr__(self, "options", options)


@dataclass(frozen=True)
class PPOConfig:
    """PPO's hyper-parameters; names follow CleanRL, defaults follow TRL where it has one."""

    rollout_batch: int = 64
    """B: prompts (and responses) per PPO step."""
    minibatch: int = 16
    """Responses per gradient step; divides `rollout_batch`."""
    epochs: int = 4
    """K: passes over each rollout batch."""
    lr: float = 1e-4
    """Adam's learning rate, for the policy and the value model together."""
    max_grad_norm: float = 1.0
    clip_coef: float = 0.2
    """epsilon of the clipped surrogate: ratio kept in [1 - eps, 1 + eps]."""
    value_clip_coef: float = 0.2
    """How far a value prediction may move from the rollout's value before it is clipped."""
    vf_coef: float = 0.1
    gamma: float = 1.0
    gae_lambda: float = 0.95
    kl_coef: float = 0.05
    """beta: each token's reward gets -beta * KL[t] against the frozen reference policy."""
    kl_estimator: Literal["k1", "k3"] = "k1"
    whiten_rewards: bool = False
    """Scale the per-token rewards to unit variance (mean kept) before GAE, as TRL can."""
    temperature: float = 0.7
    """Sampling temperature of the rollouts; log-probabilities are taken at the same one."""
    response_length: int | None = None
    """Most tokens a response may have; None = the task's own `response_length`."""
    critic_init: CriticInit = "policy"
    """The value model's backbone: a copy of the policy's, or of the reward model's (the
    common RLHF choice, and the fair sparse baseline: it already knows the reward)."""
    critic_reward_head: bool = True
    """With critic_init="reward_model": start the value head from the RM's score head
    (False: a fresh head)."""

    def __post_init__(self) -> None:
        for name in ("rollout_batch", "minibatch", "epochs"):
            _positive_int(f"ppo.{name}", getattr(self, name))
        _check(
            self.rollout_batch % self.minibatch == 0,
            "ppo.minibatch",
            self.minibatch,
            f"it must divide ppo.rollout_batch={self.rollout_batch}",
        )
        _check(
            self.rollout_batch >= 2,
            "ppo.rollout_batch",
            self.rollout_batch,
            "give at least 2 (advantages are whitened over the batch)",
        )
        _in_range("ppo.lr", self.lr, 1e-12, 1.0)
        _in_range("ppo.max_grad_norm", self.max_grad_norm, 1e-6, 1e6)
        _in_range("ppo.clip_coef", self.clip_coef, 1e-6, 10.0)
        _in_range("ppo.value_clip_coef", self.value_clip_coef, 1e-6, 1e6)
        _in_range("ppo.vf_coef", self.vf_coef, 0.0, 1e3)
        _in_range("ppo.gamma", self.gamma, 0.0, 1.0)
        _in_range("ppo.gae_lambda", self.gae_lambda, 0.0, 1.0)
        _in_range("ppo.kl_coef", self.kl_coef, 0.0, 1e3)
        _in_range("ppo.temperature", self.temperature, 1e-3, 100.0)
        _check(
            self.kl_estimator in KL_ESTIMATORS,
            "ppo.kl_estimator",
            self.kl_estimator,
            f"choose one of {list(KL_ESTIMATORS)}",
        )
        _check(
            self.critic_init in CRITIC_INITS,
            "ppo.critic_init",
            self.critic_init,
            f"choose one of {list(CRITIC_INITS)}",
        )
        if self.response_length is not None:
            _positive_int("ppo.response_length", self.response_length)


@dataclass(frozen=True)
class TrainConfig:
    """One inner run: `steps` PPO steps of `task` with rewards shaped by `shaping`."""

    task: TaskConfig = field(default_factory=TaskConfig)
    shaping: ShapingConfig = field(default_factory=ShapingConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    steps: int = 100
    """PPO steps (one rollout batch and its K epochs of updates each)."""
    eval_interval: int = 10
    """Evaluate on held-out prompts before the first step, every this many, and at the end."""
    eval_prompts: int = 64
    """Held-out prompts per evaluation (the first of the task's eval split)."""
    eval_greedy: bool = False
    """Greedy evaluation responses; by default sampled at `ppo.temperature` with seeds that
    are the same at every evaluation of every run, whatever its `seed`."""
    eval_samples: int = 3
    """Sample texts kept per evaluation."""
    checkpoint_interval: int = 10
    """Checkpoint every this many steps (and at the end) when `run_dir` is set."""
    run_dir: str | None = None
    """Folder of this run's checkpoint and result; a run found there is resumed."""
    seed: int = 0
    torch_threads: int = 0
    """torch intra-op threads; 0 leaves torch's default."""
    device: str = "auto"
    """"auto" (CUDA when present), "cpu", "cuda" or "cuda:N"."""

    def __post_init__(self) -> None:
        for name in ("steps", "eval_interval", "eval_prompts", "checkpoint_interval"):
            _positive_int(name, getattr(self, name))
        _check(
            _integer(self.eval_samples) and self.eval_samples >= 0,
            "eval_samples",
            self.eval_samples,
            "give an integer >= 0",
        )
        _check(_integer(self.seed), "seed", self.seed, "give an integer")
        _check(
            _integer(self.torch_threads) and self.torch_threads >= 0,
            "torch_threads",
            self.torch_threads,
            "give an integer >= 0 (0 = torch's default)",
        )
        _check(
            isinstance(self.device, str) and bool(_DEVICE.match(self.device)),
            "device",
            self.device,
            "choose auto, cpu, cuda, cuda:N or mps",
        )

    def method_options(self) -> dict[str, dict[str, Any]]:
        """The attributors' options as configured; a weighted method that takes a `seed`
        and was given none gets the run's, so that it draws the same on every resume."""
        options = {k: dict(v) for k, v in self.shaping.options.items()}
        for method in self.shaping.weights:
            if "seed" in ATTRIBUTORS[method].options:
                options.setdefault(method, {}).setdefault("seed", self.seed)
        return options

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """The inverse of `to_dict`; unknown keys are refused with the valid ones named."""
        parts = {"task": TaskConfig, "shaping": ShapingConfig, "ppo": PPOConfig}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        _check(not unknown, "config", unknown, f"valid fields: {sorted(known)}")
        values: dict[str, Any] = {}
        for key, value in data.items():
            if key in parts:
                part = parts[key]
                valid = {f.name for f in fields(part)}
                bad = sorted(set(value) - valid)
                _check(not bad, key, bad, f"valid fields: {sorted(valid)}")
                values[key] = part(**value)
            else:
                values[key] = value
        return cls(**values)


RESUMABLE_CHANGES = ("steps", "device", "torch_threads", "checkpoint_interval", "run_dir")
"""Fields a resumed run may change; any other difference is a different run."""
