"""PPO that learns from per-token rewards: the inner run of a shapetune study.

One loop in paper order, in the manner of CleanRL's `ppo.py`; the reward, KL and whitening
follow TRL v1.12's `trl/experimental/ppo/ppo_trainer.py`, with phase 4 ("compute
rewards") replaced by the shaped dense rewards. Each PPO step:

    1. rollout      sample a response to each of B prompts (ends at its first EOS)
    2. logprobs     log pi(y_t), log pi_ref(y_t) and V(s_t) for every response token
    3. score        R = r(x, y): one reward-model call for the batch
    4. shape        r_t = sum_k w_k phi_k[t] - beta * KL_t
    5. advantages   GAE(gamma, lambda), whitened over the batch's tokens
    6. update       K epochs of minibatch clipped policy and value updates (one Adam)
    7. evaluate     held-out prompts every `eval_interval` steps
    8. report       hooks.report; checkpoint every `checkpoint_interval` steps

Reading order: build, train, step, update, evaluate; then the run's bookkeeping (progress,
the cost meter). The maths lives in `trainers.ppo_math`, the networks in `trainers.models`,
checkpoint files in `trainers.checkpoint`.
"""

from __future__ import annotations

import logging
import random
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import GenerationConfig

from shaping.attribution.amortized import AmortizedAttributor
from shaping.batch import RolloutBatch
from shaping.scorer import NonFiniteRewardError
from shaping.shaper import Shaper
from trainers import checkpoint
from trainers.config import ConfigError, TrainConfig
from trainers.explainer import ensure_explainer
from trainers.models import (
    Run,
    Sequences,
    build_shaper,
    disable_dropout,
    generation_config,
    make_value_model,
    resolve_device,
    response_logits,
    sample,
)
from trainers.ppo_math import (
    entropy_from_logits,
    explained_variance,
    gae,
    kl_penalty,
    logprobs_from_logits,
    masked_mean,
    masked_whiten,
    policy_loss,
    value_loss,
)
from trainers.signals import area_under_curve, distinct_n, repeated_token_fraction
from trainers.tasks.base import Task

log = logging.getLogger(__name__)

TRAIN_PHASES = ("rollout", "logprobs", "score", "shape", "advantages", "update")
EVAL_SEED = 7919
"""Seeds evaluation sampling, whatever the run's own seed: common random numbers, so the
identical policy scores identically in every run, arm and step."""
EVAL_CHUNK = 16
"""Held-out prompts sampled together, each chunk seeded by its place: a prompt's sampling
noise does not depend on the run's batch size either."""


class TrainingError(RuntimeError):
    """The run cannot go on (a non-finite loss, reward or value); names the step and phase."""

    def __init__(self, step: int, phase: str, problem: str) -> None:
        super().__init__(f"PPO step {step}, phase {phase!r}: {problem}")
        self.step, self.phase = step, phase


def _ignore_report(step: int, metrics: dict[str, float]) -> None:
    return None


def _never() -> bool:
    return False


def _ignore_step(step: int) -> None:
    return None


@dataclass
class Hooks:
    """What the outer loop hears from an inner run, and how it stops one."""

    report: Callable[[int, dict[str, float]], None] = _ignore_report
    """After every step (step 0: the evaluation before training) with that step's metrics."""
    should_stop: Callable[[], bool] = _never
    """Asked before every step; True stops the run (checkpointed) with `stopped_early`."""
    checkpointed: Callable[[int], None] = _ignore_step
    """After each checkpoint is written, with its step."""


@dataclass
class TrainResult:
    curves: dict[int, dict[str, float]]
    samples: dict[int, list[str]]
    final: dict[str, float]
    """The last step's metrics, the last evaluation, costs, and the area under the curve."""
    phase_seconds: dict[str, float]
    costs: dict[str, float]
    steps: int
    """Steps done (fewer than asked when stopped early)."""
    stopped_early: bool
    run_dir: Path | None = None
    resumed_from: int = 0
    """The step its checkpoint held when this call began (0: it started afresh)."""


# ---------------------------------------------------------------------------- build


def check_config(config: TrainConfig, task: Task) -> torch.device:
    """What `build_run` needs of the config and the task, checked without loading weights
    (a study admits a spec with this): the device, and a response length the models fit.
    Returns the device."""
    if task.name != config.task.name:
        raise ConfigError(f"task.name={config.task.name!r} but the task given is {task.name!r}")
    device = resolve_device(config.device)
    length = config.ppo.response_length or task.response_length
    limit = task.max_response_length()
    if limit is not None and length > limit:
        raise ConfigError(
            f"ppo.response_length={length} is longer than the models of task {task.name!r} "
            f"take after its longest prompt; give at most {limit}"
        )
    return device


def build_run(config: TrainConfig, task: Task, explainers: Path | None = None) -> Run:
    """Load the policy, a frozen reference copy, the value model and the reward model; an
    `amortized` method starts from the reward model's explainer, cached under `explainers`
    (built there first if missing; None: from an untrained network)."""
    device = check_config(config, task)
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    policy, ref_policy = task.load_policy(), task.load_policy()  # fresh copies: the start
    _seed_everything(config.seed)  # after loading: a task may seed while building models
    value = make_value_model(config.ppo, task, policy)
    models: list[torch.nn.Module] = [policy, ref_policy, value]
    for model in models:
        disable_dropout(model)
        model.to(device).eval()
    ref_policy.requires_grad_(False)
    params = [*policy.parameters(), *value.parameters()]
    optimizer = torch.optim.Adam(params, lr=config.ppo.lr, eps=1e-5)
    shaper = build_shaper(
        task.load_reward_model(),
        config.shaping,
        config.method_options(),
        task.tokenizer,
        device,
    )
    amortized = shaper.attributors.get("amortized")
    if isinstance(amortized, AmortizedAttributor) and explainers is not None:
        length = config.ppo.response_length or task.response_length
        amortized.use_explainer(ensure_explainer(task, length, explainers, device=device).net)
    train_prompts, eval_prompts = _prompts(task)
    sampling, evaluation = _generation_configs(config, task)
    return Run(
        config=config,
        task=task,
        device=device,
        policy=policy,
        ref_policy=ref_policy,
        value=value,
        optimizer=optimizer,
        scorer=shaper.scorer,
        shaper=shaper,
        sampling=sampling,
        evaluation=evaluation,
        train_prompts=train_prompts,
        eval_prompts=eval_prompts[: config.eval_prompts],
    )


# ---------------------------------------------------------------------------- train


def train(
    config: TrainConfig, task: Task, hooks: Hooks | None = None, explainers: Path | None = None
) -> TrainResult:
    """Run (or resume, from `config.run_dir`) `config.steps` PPO steps on `task` (`explainers`:
    see `build_run`)."""
    hooks = hooks or Hooks()
    run = build_run(config, task, explainers)
    run_dir = Path(config.run_dir) if config.run_dir else None
    saved = checkpoint.resume(run, run_dir) if run_dir else None
    progress = Progress.restore(saved, run.device) if saved else Progress(CostMeter(run.device))
    meter = progress.meter
    if progress.step == 0 and not progress.curves:
        # Before any update: where the policy starts.
        with meter.phase("evaluate"):
            point = evaluate(run, 0)
        progress.record(0, point)
        progress.last = point.metrics | meter.end_step()
        hooks.report(0, progress.last)
    stopped_early, saved_step, resumed_from = False, progress.step, progress.step
    while progress.step < config.steps:
        if hooks.should_stop():
            stopped_early = True
            break
        step = progress.step + 1
        # phases 1-6; what the shaper spends in them (RM rows, attribution) is training cost
        with meter.charging(run.shaper, responses=config.ppo.rollout_batch):
            metrics = ppo_step(run, step, meter)
        # 7. evaluate on held-out prompts
        if step % config.eval_interval == 0 or step == config.steps:
            with meter.phase("evaluate"):
                point = evaluate(run, step)
            progress.record(step, point)
            metrics |= point.metrics
        # 8. report, and checkpoint
        metrics |= meter.end_step()
        progress.step, progress.last = step, metrics
        hooks.report(step, metrics)
        if run_dir and step % config.checkpoint_interval == 0:
            checkpoint.save_run(run, progress.state(), run_dir)
            saved_step = step
            hooks.checkpointed(step)
    if run_dir and saved_step != progress.step:
        checkpoint.save_run(run, progress.state(), run_dir)
        hooks.checkpointed(progress.step)
    result = replace(progress.result(stopped_early, run_dir), resumed_from=resumed_from)
    if run_dir:
        checkpoint.save_result(asdict(result), run_dir)
    return result


# ---------------------------------------------------------------------------- step


def ppo_step(run: Run, step: int, meter: CostMeter) -> dict[str, float]:
    """One PPO iteration (phases 1-6, each timed by `meter`): its metrics."""
    cfg = run.config.ppo
    prompts = batch_prompts(run.train_prompts, run.config.seed, step, cfg.rollout_batch)

    # 1. rollout: y ~ pi(. | x) at temperature, cut after its first EOS
    with meter.phase("rollout"):
        seqs = sample(run.policy, prompts, run.sampling, run.device)
        mask = seqs.mask  # (B, T)
        responses = seqs.response_lists()

    # 2. log pi, log pi_ref and V(s_t) of every response token, before any update
    with meter.phase("logprobs"):
        logprobs, ref_logprobs, values = forward_rollout(run, seqs)
        _finite(step, "logprobs", logprobs=logprobs, ref_logprobs=ref_logprobs, values=values)

    # 3. score: R = r(x, y)
    with meter.phase("score"):
        try:  # the scorer names the response whose score is not finite
            scores = run.scorer.score_responses(prompts, responses)  # (B,)
        except NonFiniteRewardError as e:
            raise TrainingError(step, "score", str(e)) from e

    # 4. shape: r_t = sum_k w_k phi_k[t] - beta * KL_t (TRL: R on the last token only)
    with meter.phase("shape"):
        batch = RolloutBatch.from_lists(prompts, responses, scores.tolist(), run.pad_id)
        kl = kl_penalty(logprobs, ref_logprobs, cfg.kl_estimator) * mask  # (B, T)
        shaped, rewards = token_rewards(run, batch, kl, mask, step)

    # 5. advantages: GAE, then whitened over the batch's response tokens
    with meter.phase("advantages"):
        advantages, returns = gae(rewards, values, mask, cfg.gamma, cfg.gae_lambda)
        advantages = masked_whiten(advantages, mask) * mask

    # 6. K epochs of minibatch updates of the clipped policy and value losses
    with meter.phase("update"):
        update = ppo_update(run, seqs, logprobs, values, advantages, returns, step)

    mean_kl = float(kl.sum(1).mean())  # per response, as TRL reports it
    return {
        "objective/scores": float(scores.mean()),
        "objective/kl": mean_kl,
        "objective/entropy": float((-logprobs * mask).sum(1).mean()),
        "objective/non_score_reward": -cfg.kl_coef * mean_kl,
        "objective/rlhf_reward": float(scores.mean()) - cfg.kl_coef * mean_kl,
        "policy/response_length": float(mask.sum(1).float().mean()),
        "policy/eos_fraction": _eos_fraction(run, responses),
        "losses/explained_variance": float(explained_variance(values, returns, mask)),
        **update,
        **_shaping_metrics(run, shaped, mask),
    }


def batch_prompts(prompts: list[list[int]], seed: int, step: int, B: int) -> list[list[int]]:
    """Step `step`'s B prompts: passes over the training prompts, each in an order drawn
    from (seed, pass); a function of the step alone, so a resumed run sees the same ones."""
    N = len(prompts)
    out = []
    for k in range((step - 1) * B, step * B):
        order = np.random.default_rng([seed, k // N]).permutation(N)
        out.append(prompts[int(order[k % N])])
    return out


@torch.no_grad()
def forward_rollout(run: Run, seqs: Sequences) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logprobs, ref_logprobs, values), each (B, T) and 0 on padding, in minibatch chunks."""
    out: dict[str, list[torch.Tensor]] = defaultdict(list)
    B, temperature = seqs.mask.shape[0], run.config.ppo.temperature
    for idx in torch.arange(B, device=run.device).split(run.config.ppo.minibatch):
        chunk = seqs.select(idx)
        tokens = chunk.responses
        logits = response_logits(run.policy, chunk, temperature)
        out["logprobs"].append(logprobs_from_logits(logits, tokens))
        ref_logits = response_logits(run.ref_policy, chunk, temperature)
        out["ref"].append(logprobs_from_logits(ref_logits, tokens))
        out["values"].append(run.value(chunk))
    mask = seqs.mask
    logprobs, ref, values = (torch.cat(out[k]) * mask for k in ("logprobs", "ref", "values"))
    return logprobs, ref, values


def token_rewards(
    run: Run, batch: RolloutBatch, kl: torch.Tensor, mask: torch.Tensor, step: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(shaped, rewards), each (B, T): the shaper's mix of credits, and that minus beta * KL."""
    cfg = run.config.ppo
    try:
        shaped = run.shaper(batch).to(run.device)
    except ValueError as e:  # a batch or credits that cannot be shaped
        raise TrainingError(step, "shape", str(e)) from e
    if shaped.shape != mask.shape:
        problem = f"shaped rewards are {tuple(shaped.shape)}, responses {tuple(mask.shape)}"
        raise TrainingError(step, "shape", problem)
    rewards = (shaped - cfg.kl_coef * kl) * mask
    if cfg.whiten_rewards:
        rewards = masked_whiten(rewards, mask, shift_mean=False) * mask
    _finite(step, "shape", rewards=rewards)
    return shaped, rewards


# ---------------------------------------------------------------------------- update


def ppo_update(
    run: Run,
    seqs: Sequences,
    old_logprobs: torch.Tensor,
    old_values: torch.Tensor,
    advantages: torch.Tensor,
    returns: torch.Tensor,
    step: int,
) -> dict[str, float]:
    """K epochs over the rollout in shuffled minibatches; the mean of each diagnostic."""
    cfg = run.config.ppo
    B = seqs.mask.shape[0]
    params = [p for group in run.optimizer.param_groups for p in group["params"]]
    rng = np.random.default_rng([run.config.seed, step])  # stateless: resumes exactly
    stats: dict[str, list[float]] = defaultdict(list)
    for epoch in range(cfg.epochs):
        for mb in rng.permutation(B).reshape(-1, cfg.minibatch):
            idx = torch.as_tensor(mb, device=run.device)
            chunk, mask = seqs.select(idx), seqs.mask[idx]
            logits = response_logits(run.policy, chunk, cfg.temperature)  # (b, T, V)
            logprobs = logprobs_from_logits(logits, chunk.responses)
            values = run.value(chunk)
            pg_loss, pg = policy_loss(
                logprobs, old_logprobs[idx], advantages[idx], mask, cfg.clip_coef
            )
            vf_loss, vf_clipfrac = value_loss(
                values, old_values[idx], returns[idx], mask, cfg.value_clip_coef
            )
            loss = pg_loss + cfg.vf_coef * vf_loss
            if not torch.isfinite(loss):
                raise TrainingError(
                    step,
                    "update",
                    f"loss is {float(loss)} (epoch {epoch + 1}); "
                    f"policy loss {float(pg_loss)}, value loss {float(vf_loss)}",
                )
            run.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            run.optimizer.step()
            with torch.no_grad():
                entropy = masked_mean(entropy_from_logits(logits), mask)
            for key, value in (
                ("losses/policy", pg_loss),
                ("losses/value", vf_loss),
                ("losses/value_clipfrac", vf_clipfrac),
                ("losses/grad_norm", grad_norm),
                ("policy/approxkl", pg["approxkl"]),
                ("policy/clipfrac", pg["clipfrac"]),
                ("policy/ratio", pg["ratio"]),
                ("policy/entropy", entropy),
            ):
                stats[key].append(float(value.detach()))
    return {key: sum(v) / len(v) for key, v in stats.items()}


# ---------------------------------------------------------------------------- evaluate


@dataclass(frozen=True)
class CurvePoint:
    """One held-out evaluation: its `eval/` metrics, and the first `eval_samples` texts."""

    metrics: dict[str, float]
    samples: list[str]


@torch.no_grad()
def evaluate(run: Run, step: int) -> CurvePoint:
    """Phase 7: responses to held-out prompts, sampled with seeds fixed by the prompts'
    places alone (or greedy), so every evaluation of every run draws alike, scored by the
    reward model (and the task's gold judge)."""
    prompts = run.eval_prompts
    responses: list[list[int]] = []
    kl: list[torch.Tensor] = []
    devices = [run.device] if run.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # leaves the training RNG untouched
        for start in range(0, len(prompts), EVAL_CHUNK):
            # Not the run's seed: evaluation noise common to every run is cancelled by every
            # comparison of two runs instead of being charged to it.
            torch.manual_seed(EVAL_SEED + start)
            chunk = prompts[start : start + EVAL_CHUNK]
            seqs = sample(run.policy, chunk, run.evaluation, run.device)
            responses += seqs.response_lists()
            kl.append(_exact_kl(run, seqs))
    scores = run.scorer.score_responses(prompts, responses)
    decode = run.task.tokenizer.decode
    texts = [
        str(decode(p + r, skip_special_tokens=True))
        for p, r in zip(prompts, responses, strict=True)
    ]
    gold = run.task.gold(texts)
    metrics = {
        "eval/rm_mean": float(scores.mean()),
        "eval/rm_std": float(scores.std()) if len(prompts) > 1 else 0.0,
        "eval/kl": float(torch.cat(kl).mean()),
        "eval/length": sum(map(len, responses)) / len(responses),
        "eval/repeated_token_fraction": repeated_token_fraction(responses),
        "eval/distinct_1": distinct_n(responses, 1),
        "eval/distinct_2": distinct_n(responses, 2),
    }
    if gold is not None:
        metrics["eval/gold_mean"] = float(np.mean(gold))
    log.info(
        "step %d: held-out RM %.4f, KL %.3f", step, metrics["eval/rm_mean"], metrics["eval/kl"]
    )
    return CurvePoint(metrics, texts[: run.config.eval_samples])


def _exact_kl(run: Run, seqs: Sequences) -> torch.Tensor:
    """sum_t KL(pi(.|s_t) || pi_ref(.|s_t)) per response, from the full distributions: (B,).
    Exact given the prefixes, so it is valid for greedy responses too."""
    temperature = run.config.ppo.temperature
    logp = torch.log_softmax(response_logits(run.policy, seqs, temperature).float(), -1)
    ref = torch.log_softmax(response_logits(run.ref_policy, seqs, temperature).float(), -1)
    per_token = (logp.exp() * (logp - ref)).sum(-1)  # (B, T)
    return (per_token * seqs.mask).sum(1)


# ---------------------------------------------------------------------------- bookkeeping


class CostMeter:
    """The run's one account of what it spent, each a total over the run so far (saved in
    every checkpoint): wall seconds per phase, responses sampled, and the shaper's cost
    counters (reward-model rows, forwards and seconds; attribution seconds)."""

    def __init__(
        self,
        device: torch.device,
        costs: dict[str, float] | None = None,
        phase_seconds: dict[str, float] | None = None,
    ) -> None:
        self.device = device
        self.costs: dict[str, float] = defaultdict(float, costs or {})
        self.phase_seconds: dict[str, float] = defaultdict(float, phase_seconds or {})
        self.step_seconds: dict[str, float] = defaultdict(float)
        """This step's seconds per phase, until `end_step` adds them to `phase_seconds`."""

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time one phase of this step."""
        started = time.perf_counter()
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)  # kernels are asynchronous
            self.step_seconds[name] += time.perf_counter() - started

    @contextmanager
    def charging(self, shaper: Shaper, responses: int) -> Iterator[None]:
        """Charge what `shaper` spends inside, and `responses` sampled responses, to the run.
        The shaper's counters also move when evaluation scores its responses, outside this:
        that is not a training cost."""
        before = shaper.metrics()
        yield
        for key, value in shaper.metrics().items():
            if key.startswith("cost/"):
                self.costs[key] += value - before.get(key, 0.0)
        self.costs["cost/responses"] += float(responses)
        self.costs["cost/rm_rows_per_response"] = (
            self.costs["cost/rm_rows"] / self.costs["cost/responses"]
        )

    def train_seconds(self) -> float:
        """Seconds spent in the training phases so far, this step's included."""
        seconds = sum(self.phase_seconds.get(p, 0.0) for p in TRAIN_PHASES)
        return seconds + sum(self.step_seconds.get(p, 0.0) for p in TRAIN_PHASES)

    def end_step(self) -> dict[str, float]:
        """Close the step: its `cost/` metrics, every one a total over the run so far except
        `cost/step_seconds`."""
        for phase, seconds in self.step_seconds.items():
            self.phase_seconds[phase] += seconds
        metrics = {f"cost/{p}_seconds": s for p, s in self.phase_seconds.items()}
        metrics |= self.costs
        metrics["cost/step_seconds"] = sum(self.step_seconds.values())
        self.step_seconds = defaultdict(float)
        return metrics


@dataclass
class Progress:
    """Everything about the run so far that is not weights; saved in every checkpoint."""

    meter: CostMeter
    step: int = 0
    curves: dict[int, dict[str, float]] = field(default_factory=dict)
    """Evaluation step -> eval metrics (and the training time spent by then)."""
    samples: dict[int, list[str]] = field(default_factory=dict)
    last: dict[str, float] = field(default_factory=dict)
    """The metrics of the last step."""

    def record(self, step: int, point: CurvePoint) -> None:
        """Put an evaluation on the learning curve, with the training time spent by then."""
        self.curves[step] = {**point.metrics, "cost/train_seconds": self.meter.train_seconds()}
        self.samples[step] = point.samples

    def result(self, stopped_early: bool, run_dir: Path | None) -> TrainResult:
        costs = dict(self.meter.costs)
        final = dict(self.last)
        if self.curves:
            final |= self.curves[max(self.curves)]
            final["objective/eval_rm_auc"] = area_under_curve(self.curves, "eval/rm_mean")
        final |= costs
        return TrainResult(
            curves=self.curves,
            samples=self.samples,
            final=final,
            phase_seconds=dict(self.meter.phase_seconds),
            costs=costs,
            steps=self.step,
            stopped_early=stopped_early,
            run_dir=run_dir,
        )

    def state(self) -> dict[str, Any]:
        """As a checkpoint holds it: plain values."""
        return {
            "step": self.step,
            "curves": self.curves,
            "samples": self.samples,
            "last": self.last,
            "costs": dict(self.meter.costs),
            "phase_seconds": dict(self.meter.phase_seconds),
        }

    @classmethod
    def restore(cls, state: dict[str, Any], device: torch.device) -> Progress:
        return cls(
            meter=CostMeter(device, state["costs"], state["phase_seconds"]),
            step=state["step"],
            curves={int(k): v for k, v in state["curves"].items()},
            samples={int(k): v for k, v in state["samples"].items()},
            last=state["last"],
        )


def _shaping_metrics(run: Run, shaped: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """How dense the shaped reward is: the last token's share of |r_t|, and the prompt-only
    offset R - sum_t r_t that shaping took out of the return; and the shaper's own
    `shaping/` metrics (conservation residuals)."""
    lengths = mask.sum(1)
    last = shaped[torch.arange(shaped.shape[0], device=shaped.device), lengths - 1].abs()
    total = shaped.abs().sum(1).clamp_min(1e-8)
    return {
        "shaping/last_token_share": float((last / total).mean()),
        "shaping/offset_mean": float(run.shaper.last_offsets.mean()),
        **{k: v for k, v in run.shaper.metrics().items() if k.startswith("shaping/")},
    }


def _eos_fraction(run: Run, responses: list[list[int]]) -> float:
    eos = run.task.tokenizer.eos_token_id
    return sum(bool(r) and r[-1] == eos for r in responses) / len(responses)


def _finite(step: int, phase: str, **tensors: torch.Tensor) -> None:
    for name, tensor in tensors.items():
        bad = ~torch.isfinite(tensor)
        if bool(bad.any()):
            rows = sorted({int(i) for i in bad.nonzero()[:, 0].tolist()})
            raise TrainingError(
                step, phase, f"{name} is not finite (NaN or inf) in row(s) {rows[:8]} of the batch"
            )


def _prompts(task: Task) -> tuple[list[list[int]], list[list[int]]]:
    """The task's training and held-out prompts; PPO needs some of each."""
    train_prompts, eval_prompts = task.prompts("train"), task.prompts("eval")
    if not train_prompts or not eval_prompts:
        raise ConfigError(
            f"task {task.name!r} has {len(train_prompts)} training and {len(eval_prompts)} "
            "held-out prompts; PPO needs both"
        )
    return train_prompts, eval_prompts


def _generation_configs(
    config: TrainConfig, task: Task
) -> tuple[GenerationConfig, GenerationConfig]:
    """(sampling, evaluation): how rollouts and held-out responses are decoded."""
    tok = task.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    if pad_id is None:
        raise ConfigError(f"task {task.name!r}: the tokenizer has neither a pad nor an EOS token")
    length = config.ppo.response_length or task.response_length
    temperature = config.ppo.temperature
    return (
        generation_config(tok.eos_token_id, pad_id, length, temperature, greedy=False),
        generation_config(tok.eos_token_id, pad_id, length, temperature, config.eval_greedy),
    )


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
