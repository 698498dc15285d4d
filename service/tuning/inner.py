"""One inner run of one trial, as a worker executes it: plain data in, plain data out.

The worker heartbeats the trial from a thread for as long as the run lives (whatever a
single PPO step costs), checks for cancellation and pruning between steps, and checkpoints
into a folder named by the trial's parameters, so a retried trial continues from there.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna

from service.store.studies import get_study
from service.tuning.credits import credit_samples
from service.tuning.objective import CURVE_KEY, objective_value
from service.tuning.storage import open_storage
from trainers.checkpoint import CHECKPOINT
from trainers.config import TrainConfig
from trainers.ppo import RESULT, Hooks, train
from trainers.tasks import make_task

log = logging.getLogger(__name__)

CANCEL_POLL_S = 5.0


def run_inner(job: dict[str, Any]) -> dict[str, Any]:
    """`job`: study, storage, trial_id (None: a run of no trial, e.g. a re-evaluation),
    seed_index, config (TrainConfig as a dict), home, run_dir, heartbeat_s, objective,
    target, prune, credit (credit the sample responses token by token,
    `service.tuning.credits`). Failures of the run itself (NaN, a bad model) come back as
    `error`; only a lost worker raises."""
    stop = threading.Event()
    if job["trial_id"] is not None:
        storage = open_storage(job["storage"], job["heartbeat_s"])
        beat = threading.Thread(
            target=_heartbeat,
            args=(storage, job["trial_id"], job["heartbeat_s"], stop),
            daemon=True,
        )
        beat.start()
    try:
        config = TrainConfig.from_dict({**job["config"], "run_dir": job["run_dir"]})
        Path(job["run_dir"]).mkdir(parents=True, exist_ok=True)
        task = make_task(config.task.name, Path(job["home"]), **config.task.options)
        hooks = Hooks(
            report=_pruning_report(job, storage) if job["prune"] else Hooks().report,
            should_stop=_stop_check(job),
        )
        result = train(config, task, hooks)
    except Exception as e:  # the run failed for a reason of its own: the trial records it
        log.warning("inner run of trial %s failed:\n%s", job["trial_id"], traceback.format_exc())
        return {
            "seed_index": job["seed_index"],
            "error": f"{type(e).__name__}: {e}",
            **_artifacts(Path(job["run_dir"])),  # a checkpoint it left lets a retry go on
        }
    else:  # still heartbeating: crediting runs the reward model a few hundred times
        samples = result.samples.get(max(result.samples), []) if result.samples else []
        credits: list[dict[str, Any]] = []
        credits_note = "the run stopped early: its samples were not credited"
        if job["credit"] and not result.stopped_early:
            credits, credits_note = credit_samples(task, config, samples)
    finally:
        stop.set()
    curve = {int(s): m for s, m in result.curves.items()}
    return {
        "seed_index": job["seed_index"],
        "value": objective_value(job["objective"], curve, result.steps, job.get("target")),
        "curve": {str(s): _compact(m) for s, m in curve.items()},
        "final": {k: v for k, v in result.final.items() if isinstance(v, int | float)},
        "samples": samples,
        "sample_credits": credits,
        "sample_credits_note": credits_note,
        "steps": result.steps,
        "stopped_early": result.stopped_early,
        "pruned": bool(job.get("_pruned")),
        **_artifacts(Path(job["run_dir"])),
    }


def _artifacts(run_dir: Path) -> dict[str, Any]:
    """The files the run left, for the study's artifacts index: where, and on which host."""
    files = [
        {"kind": kind, "path": str(run_dir / name), "bytes": (run_dir / name).stat().st_size}
        for kind, name in (("checkpoint", CHECKPOINT), ("result", RESULT))
        if (run_dir / name).is_file()
    ]
    return {"host": socket.gethostname(), "artifacts": files}


def _compact(metrics: dict[str, float]) -> dict[str, float]:
    keep = (
        CURVE_KEY,
        "eval/gold_mean",
        "eval/kl",
        "eval/repeated_token_fraction",
        "cost/train_seconds",
    )
    return {k: float(metrics[k]) for k in keep if k in metrics}


def _heartbeat(
    storage: optuna.storages.RDBStorage, trial_id: int, every_s: float, stop: threading.Event
) -> None:
    while not stop.is_set():
        try:
            storage.record_heartbeat(trial_id)
        except Exception as e:  # a database hiccup must not kill the run; the next beat retries
            log.warning("heartbeat of trial %s failed: %s", trial_id, e)
        stop.wait(every_s)


def _stop_check(job: dict[str, Any]) -> Callable[[], bool]:
    """True once the study is being cancelled (polled every few seconds), or pruned."""
    last = {"at": 0.0, "stop": False}

    def should_stop() -> bool:
        if job.get("_pruned"):
            return True
        if not last["stop"] and time.monotonic() - float(last["at"]) > CANCEL_POLL_S:
            last["at"] = time.monotonic()
            status = get_study(job["storage"], job["study"]).status
            last["stop"] = status in ("cancelling", "cancelled")
        return bool(last["stop"])

    return should_stop


def _pruning_report(
    job: dict[str, Any], storage: optuna.storages.RDBStorage
) -> Callable[[int, dict[str, float]], None]:
    """Report each evaluation as the trial's intermediate value; mark the job pruned when
    the study's pruner says so (should_stop then ends the run)."""
    study = optuna.load_study(
        study_name=job["study"], storage=storage, pruner=optuna.pruners.MedianPruner()
    )
    trial = optuna.trial.Trial(study, job["trial_id"])

    def report(step: int, metrics: dict[str, float]) -> None:
        if CURVE_KEY in metrics:
            trial.report(metrics[CURVE_KEY], step)
            if trial.should_prune():
                job["_pruned"] = True

    return report
