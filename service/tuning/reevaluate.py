"""The incumbent re-evaluated on fresh seeds, beside the pure-sparse control.

The best mean over a few noisy seeds is biased upwards: of many trials, the one picked is
likely one whose seeds were lucky (the winner's curse). Re-running it on seeds no trial
used gives an unbiased estimate. The control runs on the same fresh seeds, so each seed
gives a paired difference (common random numbers: the same prompts and initial draws), whose
standard error is smaller than that of either mean when the runs co-vary.

Runs go through the study's executor like trials' inner runs, into folders named by the
arm's parameters and the seed, so an interrupted re-evaluation continues where it stopped
and a repeated one reuses finished runs. The result is kept in the study's attributes.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from service.executor import Executor
from service.formatting import number
from service.tuning.contracts import InnerJob, InnerResult, TrialRecord, own_complete
from service.tuning.inner import run_inner
from service.tuning.objective import primary
from service.tuning.read import REEVALUATION
from service.tuning.spec import StudySpec
from service.tuning.storage import opened_storage
from service.tuning.study import incumbent, run_key, sparse_arm, stderr

FRESH_SEEDS = 10_000
"""Fresh seeds start this far past the study's seed; a study runs far fewer seeds."""
POLL_S = 1.0


class ReevaluationError(RuntimeError):
    pass


def reevaluate(
    spec: StudySpec,
    url: str,
    home: Path,
    executor: Executor,
    seeds: int,
    trial: int | None = None,
    on_run: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run trial `trial` (default: the incumbent) and the pure-sparse control on `seeds`
    fresh seeds; keep and return the result (kept as the study attribute `REEVALUATION`)."""
    if seeds < 2:
        raise ReevaluationError(f"seeds={seeds}: a standard error needs at least 2 seeds")
    with opened_storage(url) as storage:
        study = optuna.load_study(study_name=spec.name, storage=storage)
        arms = _arms(study, spec, trial)
        fresh = [spec.seed + FRESH_SEEDS + k for k in range(seeds)]
        jobs = [_job(spec, url, home, t, k, seed) for t in arms for k, seed in enumerate(fresh)]
        values = _run(executor, jobs, on_run)
        out_arms: list[dict[str, Any]] = []
        for t in arms:
            runs = [values[(t.number, k)] for k in range(seeds)]
            record = TrialRecord.from_trial(t)
            out_arms.append(
                {
                    "trial": t.number,
                    "label": record.label or "incumbent",
                    "weights": record.weights,
                    "knobs": record.knobs,
                    "study_value": primary(t),
                    "study_stderr": record.stderr,
                    "values": runs,
                    **_mean(runs),
                }
            )
        result: dict[str, Any] = {
            "objective": spec.objective,
            "seeds": fresh,
            "arms": out_arms,
            "difference": None,
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        if len(out_arms) == 2:
            paired = [
                a - b for a, b in zip(out_arms[0]["values"], out_arms[1]["values"], strict=True)
            ]
            result["difference"] = {"values": paired, **_mean(paired)}
        study.set_user_attr(REEVALUATION, result)
        return result


def _arms(study: optuna.Study, spec: StudySpec, number: int | None) -> list[FrozenTrial]:
    complete = own_complete(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    if number is None:
        chosen = incumbent(complete, spec.objective)
        if chosen is None:
            raise ReevaluationError(f"study {spec.name!r} has no completed trial to re-evaluate")
    else:
        chosen = next((t for t in complete if t.number == number), None)
        if chosen is None:
            raise ReevaluationError(
                f"study {spec.name!r} has no completed trial {number} "
                f"(`shapetune status {spec.name}` lists them)"
            )
    sparse = sparse_arm(complete)
    return [chosen] if sparse is None or sparse.number == chosen.number else [chosen, sparse]


def _job(spec: StudySpec, url: str, home: Path, t: FrozenTrial, k: int, seed: int) -> InnerJob:
    record = TrialRecord.from_trial(t)
    config = spec.train_config(record.weights or {}, record.knobs, seed)
    run_dir = home / "studies" / spec.name / "reevaluation" / run_key(t.params) / f"seed{seed}"
    return InnerJob(
        study=spec.name,
        storage=url,
        trial_id=None,  # a run of no trial: nothing to heartbeat
        trial_number=t.number,
        seed_index=k,
        config=config.to_dict(),
        home=str(home),
        run_dir=str(run_dir),
        heartbeat_s=0.0,
        objective=spec.objective,
        target=spec.target,
        pruner=None,
        seeds=1,
        credit=False,
        gpus=spec.resources.gpus,
    )


def _run(
    executor: Executor, jobs: list[InnerJob], on_run: Callable[[str], None] | None
) -> dict[tuple[int, int], float]:
    queue, values = list(jobs), {}
    while queue or executor.running():
        while queue and executor.running() < executor.slots:
            executor.submit(run_inner, queue.pop(0))
        for outcome in executor.wait(POLL_S):
            job: InnerJob = outcome.job
            result: InnerResult | None = outcome.result
            where = f"trial {job.trial_number}, seed {job.config['seed']}"
            error = outcome.error or (result.error if result else "no result")
            if error or result is None or result.stopped_early:
                executor.shutdown()
                why = error or "stopped early (the study was cancelled)"
                raise ReevaluationError(
                    f"the re-evaluation run of {where} failed: {why}; "
                    "running the command again continues from the finished runs"
                )
            values[(job.trial_number, job.seed_index)] = float(result.value)
            if on_run:
                on_run(f"{where}: {number(result.value)}")
    return values


def _mean(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "stderr": stderr(values)}
