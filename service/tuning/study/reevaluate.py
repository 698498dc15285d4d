"""The study's best shapes raced against pure sparse on fresh seeds, paired by seed.

The best mean over a few noisy seeds is biased upwards: of many trials, the one picked is
likely one whose seeds were lucky (the winner's curse). Re-running on seeds no trial used
gives unbiased estimates. As SMAC's intensifier races challengers against its incumbent on
the same instances, the race runs its arms in rounds on the same fresh seeds: every round
adds seeds to every arm still in it, a shape leaves once its interval against the leader
says it is behind, and the race stops as soon as the best shape's verdict against sparse is
decided (`service.tuning.study.verdict.decide`) or at `max_seeds`. Its intervals are wider at the
looks before the last (`service.tuning.study.verdict.race_level`), so that stopping early, and
picking the best of several shapes, keeps the race's chance of a false verdict within 5 %.

The sparse baseline is the best trial at the sparse vertex: where a study tuned knobs (a
learning rate, the KL coefficient) that is the best sparse point over the same knobs, so no
shape wins by fixing a poor learning rate.

Runs go through the study's executor like trials' inner runs, into folders named by the
arm's parameters and the seed, so an interrupted race continues where it stopped and a
repeated one reuses finished runs. The race is kept in the study's attributes after every
round.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from service.executor import Executor
from service.formatting import number
from service.tuning.contracts import (
    CONTROL_SPARSE,
    REEVALUATION,
    InnerJob,
    InnerResult,
    TrialRecord,
    stderr,
)
from service.tuning.contracts import own_complete as own_completed
from service.tuning.optuna_storage import opened_storage
from service.tuning.search.objective import CURVE_KEY, direction, is_feasible, primary
from service.tuning.search.pairing import paired
from service.tuning.spec.model import StudySpec
from service.tuning.study import verdict
from service.tuning.study.inner import run_inner
from service.tuning.study.loop import run_key

FRESH_SEEDS = 10_000
"""Fresh seeds start here (a study's own seeds are its seed and the few after it)..."""
FRESH_STRIDE = 1_000
"""...plus this many for each unit of the study's seed, so that studies of other seeds race
on seeds of their own: their verdicts are independent evidence."""
POLL_S = 1.0
SPARSE = "sparse"


class ReevaluationError(RuntimeError):
    pass


@dataclass(frozen=True)
class RaceSize:
    """How long a race may run: `arms` shapes against sparse, `min_seeds` fresh seeds in
    the first round, `round_seeds` more a round, at most `max_seeds`."""

    arms: int = 3
    min_seeds: int = 3
    round_seeds: int = 2
    max_seeds: int = 10

    def __post_init__(self) -> None:
        if self.arms < 1:
            raise ReevaluationError(f"arms={self.arms}: race at least one shape")
        if self.min_seeds < 2:
            raise ReevaluationError(
                f"seeds={self.min_seeds}: an interval needs at least 2 seeds in the first round"
            )
        if self.round_seeds < 1:
            raise ReevaluationError(f"round_seeds={self.round_seeds}: give 1 or more")
        if self.max_seeds < self.min_seeds:
            raise ReevaluationError(
                f"max_seeds={self.max_seeds} is below the first round's {self.min_seeds} seeds"
            )

        if self.max_seeds > FRESH_STRIDE:
            raise ReevaluationError(f"max_seeds={self.max_seeds}: at most {FRESH_STRIDE}")

    @property
    def looks(self) -> int:
        """The rounds after which the race may stop."""
        return 1 + math.ceil((self.max_seeds - self.min_seeds) / self.round_seeds)


@dataclass
class _Lane:
    """One arm of the race: a study trial, its values on the fresh seeds so far, and each
    run's gain over the initial policy (for the equivalence margin)."""

    trial: FrozenTrial
    label: str
    values: list[float] = field(default_factory=list)
    gains: list[float] = field(default_factory=list)
    left_after: int | None = None


RunCallback = Callable[[str, int, int], None]
"""Told after each run: its line, the runs done so far, and those planned so far."""


def reevaluate(
    spec: StudySpec,
    url: str,
    home: Path,
    executor: Executor,
    size: RaceSize | None = None,
    trial: int | None = None,
    on_run: RunCallback | None = None,
) -> dict[str, Any]:
    """Race the study's best `size.arms` shapes (or trial `trial` alone) against its sparse
    baseline on fresh seeds; keep the race after every round (the study attribute
    `REEVALUATION`) and return it when it is decided or at `size.max_seeds`."""
    size = size or RaceSize()
    with opened_storage(url) as storage:
        study = optuna.load_study(study_name=spec.name, storage=storage)
        complete = own_completed(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        baseline, challengers = _arms(complete, spec, size.arms, trial)
        sense = direction(spec.objective)
        lanes = [_Lane(baseline, "sparse baseline")] + [
            _Lane(t, "best shape" if k == 0 else "challenger") for k, t in enumerate(challengers)
        ]
        fresh = [fresh_seed(spec.seed, k) for k in range(size.max_seeds)]
        counter = _Counter(on_run)
        n, look = 0, 0
        while True:
            upto = size.min_seeds if n == 0 else min(n + size.round_seeds, size.max_seeds)
            look += 1
            level = verdict.race_level(look, size.looks, len(challengers))
            running = [lane for lane in lanes if lane.left_after is None]
            jobs = [
                _job(spec, url, home, lane.trial, k, fresh[k])
                for lane in running
                for k in range(n, upto)
            ]
            results = counter.run(executor, jobs)
            for lane in running:
                for k in range(n, upto):
                    result = results[(lane.trial.number, k)]
                    lane.values.append(float(result.value))
                    lane.gains.append(_gain(spec.objective, result))
            n = upto
            last = n >= size.max_seeds
            if not last:  # leaving matters only to the rounds still to come
                _drop_the_beaten(lanes, sense, level, n)
            found = _record(spec, lanes, fresh[:n], level, size, sense)
            done = found["outcome"] != "undecided" or last
            found["done"] = done
            study.set_user_attr(REEVALUATION, found)
            if done:
                return found


def fresh_seed(study_seed: int, k: int) -> int:
    """The race's k-th fresh seed for a study of seed `study_seed`."""
    return FRESH_SEEDS + FRESH_STRIDE * study_seed + k


def _arms(
    complete: list[FrozenTrial], spec: StudySpec, arms: int, number: int | None
) -> tuple[FrozenTrial, list[FrozenTrial]]:
    """The sparse baseline and the shapes to race against it, best first."""
    at_vertex = [t for t in complete if _is_sparse(t) and is_feasible(t)]
    if not at_vertex:
        raise ReevaluationError(
            f"study {spec.name!r} has no completed pure-sparse trial to race against; "
            "give the spec control_arms: true (the default) and `shapetune resume` it"
        )
    pick = min if direction(spec.objective) == "minimize" else max
    baseline = pick(at_vertex, key=lambda t: primary(t) or 0.0)
    if number is not None:
        chosen = next((t for t in complete if t.number == number), None)
        if chosen is None:
            raise ReevaluationError(
                f"study {spec.name!r} has no completed trial {number} "
                f"(`shapetune status {spec.name}` lists them)"
            )
        if _is_sparse(chosen):
            raise ReevaluationError(
                f"trial {number} is pure sparse: race a shape against it, not itself"
            )
        return baseline, [chosen]
    shapes = sorted(
        (t for t in complete if not _is_sparse(t) and is_feasible(t)),
        key=lambda t: primary(t) or 0.0,
        reverse=direction(spec.objective) == "maximize",
    )
    unique = list({run_key(t.params): t for t in reversed(shapes)}.values())[::-1]
    if not unique:
        raise ReevaluationError(
            f"study {spec.name!r} has no completed shape other than pure sparse to race"
        )
    return baseline, unique[:arms]


def _is_sparse(t: FrozenTrial) -> bool:
    record = TrialRecord.from_trial(t)
    weights = record.weights or {}
    return record.label == CONTROL_SPARSE or weights.get(SPARSE, 0.0) >= 1.0 - 1e-9


def _gain(objective: str, result: InnerResult) -> float:
    """What the run gained over the initial policy (the same in every run: common
    evaluation): its objective minus the step-0 evaluation; for steps_to_target, the steps."""
    if objective == "steps_to_target":
        return float(result.value)
    start = result.curve.get(0, {}).get(CURVE_KEY, math.nan)
    return float(result.value) - start


def _drop_the_beaten(lanes: list[_Lane], sense: str, level: float, n: int) -> None:
    """Shapes whose interval against the leader (the best arm so far, sparse included) lies
    wholly behind it leave the race. The sparse baseline and the best shape stay."""
    sign = verdict.better(sense)
    running = [lane for lane in lanes if lane.left_after is None]
    leader = max(running, key=lambda lane: sign * statistics.fmean(lane.values))
    shapes = sorted(running[1:], key=lambda lane: -sign * statistics.fmean(lane.values))
    for lane in shapes[1:]:
        if lane is leader:
            continue
        d = verdict.estimate(paired(lane.values, leader.values), level)
        if d.low is None or d.high is None:
            continue
        if (d.high < 0) if sign > 0 else (d.low > 0):
            lane.left_after = n


def _record(
    spec: StudySpec,
    lanes: list[_Lane],
    seeds: list[int],
    level: float,
    size: RaceSize,
    sense: str,
) -> dict[str, Any]:
    """The race as the study keeps it: the best shape, the baseline, the other shapes."""
    sign = verdict.better(sense)
    baseline, shapes = lanes[0], lanes[1:]
    running = [lane for lane in shapes if lane.left_after is None]
    best = max(running, key=lambda lane: sign * statistics.fmean(lane.values))
    best.label = "best shape"
    for lane in shapes:
        if lane is not best:
            lane.label = "challenger"
    margin = spec.margin.absolute or verdict.equivalence_margin(
        spec.margin.fraction, baseline.gains
    )
    d = verdict.estimate(paired(best.values, baseline.values), level)
    decision = verdict.decide(d, margin, sense, level)
    order = [best, baseline] + [lane for lane in shapes if lane is not best]
    return {
        "objective": spec.objective,
        "seeds": seeds,
        "arms": [_arm(lane, baseline, level) for lane in order],
        "difference": d.model_dump(),
        "level": level,
        "margin": margin,
        "outcome": decision.outcome,
        "more_seeds": decision.more_seeds,
        "max_seeds": size.max_seeds,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _arm(lane: _Lane, baseline: _Lane, level: float) -> dict[str, Any]:
    record = TrialRecord.from_trial(lane.trial)
    versus = None
    if lane is not baseline:
        versus = verdict.estimate(paired(lane.values, baseline.values), level)
    return {
        "trial": lane.trial.number,
        "label": lane.label,
        "weights": record.weights,
        "knobs": record.knobs,
        "study_value": primary(lane.trial),
        "study_stderr": record.stderr,
        "values": lane.values,
        "mean": statistics.fmean(lane.values),
        "stderr": stderr(lane.values),
        "left_after": lane.left_after,
        "versus_sparse": None if versus is None else versus.model_dump(),
    }


def _job(spec: StudySpec, url: str, home: Path, t: FrozenTrial, k: int, seed: int) -> InnerJob:
    record = TrialRecord.from_trial(t)
    run_dir = home / "studies" / spec.name / "reevaluation" / run_key(t.params) / f"seed{seed}"
    return InnerJob(
        study=spec.name,
        storage=url,
        trial_id=None,  # a run of no trial: nothing to heartbeat
        trial_number=t.number,
        seed_index=k,
        config=spec.train_config(record.weights or {}, record.knobs, seed, run_dir),
        home=str(home),
        heartbeat_s=0.0,
        objective=spec.objective,
        target=spec.target,
        pruner=None,
        seeds=1,
        credit=False,
        gpus=spec.resources.gpus,
    )


class _Counter:
    """Runs a round's jobs on the executor, telling `on_run` the runs done and planned."""

    def __init__(self, on_run: RunCallback | None) -> None:
        self.on_run, self.done, self.planned = on_run, 0, 0

    def run(self, executor: Executor, jobs: list[InnerJob]) -> dict[tuple[int, int], InnerResult]:
        self.planned += len(jobs)
        queue, results = list(jobs), {}
        while queue or executor.running():
            while queue and executor.running() < executor.slots:
                executor.submit(run_inner, queue.pop(0))
            for outcome in executor.wait(POLL_S):
                job: InnerJob = outcome.job
                result: InnerResult | None = outcome.result
                where = f"trial {job.trial_number}, seed {job.config.seed}"
                error = outcome.error or (result.error if result else "no result")
                if error or result is None or result.stopped_early:
                    executor.shutdown()
                    why = error or "stopped early (the study was cancelled)"
                    raise ReevaluationError(
                        f"the re-evaluation run of {where} failed: {why}; "
                        "running the command again continues from the finished runs"
                    )
                results[(job.trial_number, job.seed_index)] = result
                self.done += 1
                if self.on_run:
                    self.on_run(f"{where}: {number(result.value)}", self.done, self.planned)
        return results
