"""One inner run of one trial, as a worker executes it: plain data in, plain data out.

The worker heartbeats the trial from a thread for as long as the run lives (whatever a
single PPO step costs), checks for cancellation and pruning between steps, and checkpoints
into a folder named by the trial's parameters, so a retried trial continues from there.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
import torch

from service.store.artifacts import checkpoint_host, record_artifacts
from service.store.models import STOPPING
from service.store.studies import get_study
from service.tuning.contracts import ArtifactFile, InnerJob, InnerResult, PrunerConfig, TrialRecord
from service.tuning.optuna_storage import open_storage
from service.tuning.search.objective import CURVE_KEY, objective_value
from service.tuning.search.pruning import judge, open_judged_study
from service.tuning.study.credits import credit_samples
from trainers.checkpoint import CHECKPOINT, RESULT
from trainers.config import TrainConfig
from trainers.explainer import explainers_root
from trainers.ppo import Hooks, train
from trainers.tasks import make_task

log = logging.getLogger(__name__)

CANCEL_POLL_S = 5.0


def run_inner(job: InnerJob) -> InnerResult:
    """Run `job` to its end. Failures of the run itself (NaN, a bad model) come back as
    `error`; only a lost worker raises."""
    stop = threading.Event()
    pruned = threading.Event()  # set by the pruning report, read by the stop check
    storage, beat = None, None
    if job.trial_id is not None:
        storage = open_storage(job.storage, job.heartbeat_s)
        beat = threading.Thread(
            target=_heartbeat, args=(storage, job.trial_id, job.heartbeat_s, stop), daemon=True
        )
        beat.start()
    run_dir = job.run_dir
    try:
        _check_checkpoint_visible(job)
        config = _on_given_device(job.config, job.gpus)
        run_dir.mkdir(parents=True, exist_ok=True)
        task = make_task(config.task.name, Path(job.home), **config.task.options)
        report = None
        if job.pruner is not None and storage is not None and job.trial_id is not None:
            report = _progress_report(job, job.pruner, storage, job.trial_id, pruned)
        hooks = Hooks(
            report=report or Hooks().report,
            should_stop=_stop_check(job, pruned),
            checkpointed=_index_checkpoint(job) if job.trial_id is not None else _ignore,
        )
        result = train(config, task, hooks, explainers=explainers_root(Path(job.home)))
    except Exception as e:  # the run failed for a reason of its own: the trial records it
        log.warning("inner run of trial %s failed:\n%s", job.trial_id, traceback.format_exc())
        # A checkpoint it left lets a retry go on.
        return InnerResult(job.seed_index, **_artifacts(run_dir), error=f"{type(e).__name__}: {e}")
    else:  # still heartbeating: crediting runs the reward model a few hundred times
        samples = result.samples.get(max(result.samples), []) if result.samples else []
        credits: list[dict[str, Any]] = []
        credits_note = "the run stopped early: its samples were not credited"
        if job.credit and not result.stopped_early:
            credits, credits_note = credit_samples(task, config, samples)
    finally:
        stop.set()
        if storage is not None and beat is not None:
            # A Ray worker outlives many runs: each run's pool is closed, not left to the
            # garbage collector, or PostgreSQL soon refuses new clients.
            beat.join(timeout=job.heartbeat_s + 5)
            storage.engine.dispose()
    return InnerResult(
        job.seed_index,
        **_artifacts(run_dir),
        value=objective_value(job.objective, result.curves, result.steps, job.target),
        curve={step: _compact(m) for step, m in result.curves.items()},
        final={k: v for k, v in result.final.items() if isinstance(v, int | float)},
        samples=samples,
        sample_credits=credits,
        sample_credits_note=credits_note,
        steps=result.steps,
        resumed_from=result.resumed_from,
        stopped_early=result.stopped_early,
        pruned=pruned.is_set(),
    )


def _check_checkpoint_visible(job: InnerJob) -> None:
    """A run retried on another node must continue from its checkpoint, not start again
    unseen: if the index says one was written for this run folder and this node cannot see
    it, the run fails naming the fix."""
    path = job.run_dir / CHECKPOINT
    if path.is_file() or job.trial_id is None:
        return
    host = checkpoint_host(job.storage, job.study, str(path))
    if host is not None:
        raise RuntimeError(
            f"this run's checkpoint {str(path)!r}, written on {host}, is not visible on "
            f"{socket.gethostname()}: mount SHAPETUNE_HOME at the same path on every node "
            "(a shared filesystem), so that a retry continues where the run was"
        )


def _index_checkpoint(job: InnerJob) -> Callable[[int], None]:
    """Record the run's checkpoint in the artifacts index when it is first written: a retry
    on another node then knows there is one to continue from."""
    recorded = threading.Event()

    def checkpointed(step: int) -> None:
        if recorded.is_set():
            return
        path = job.run_dir / CHECKPOINT
        files = [{"kind": "checkpoint", "path": str(path), "bytes": path.stat().st_size}]
        try:
            record_artifacts(
                job.storage,
                job.study,
                job.trial_number,
                job.seed_index,
                socket.gethostname(),
                files,
            )
            recorded.set()
        except Exception as e:  # a database hiccup: the next checkpoint tries again
            log.warning("cannot index the checkpoint of %s: %s", job.run_dir, e)

    return checkpointed


def _ignore(step: int) -> None:
    return None


def _on_given_device(config: TrainConfig, gpus: float) -> TrainConfig:
    """A run given GPUs trains on CUDA, on the device Ray made visible to it (it is then
    `cuda:0` here); on a worker whose torch sees no CUDA it fails saying so, rather than
    train on the CPU in a GPU's slot."""
    if not gpus or config.device not in ("auto", "cuda"):
        return config
    if not torch.cuda.is_available():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "unset")
        raise RuntimeError(
            f"this inner run was given {gpus:g} GPU(s) (CUDA_VISIBLE_DEVICES={visible}) "
            f"but torch on {socket.gethostname()} sees no CUDA device (torch "
            f"{torch.__version__}); install a CUDA build of torch on the GPU workers, or "
            "set resources.gpus: 0"
        )
    return replace(config, device="cuda")


def _artifacts(run_dir: Path) -> dict[str, Any]:
    """The files the run left, for the study's artifacts index, and where it ran: host,
    Ray node, the GPUs it was given."""
    files = [
        ArtifactFile(kind, str(run_dir / name), (run_dir / name).stat().st_size)
        for kind, name in (("checkpoint", CHECKPOINT), ("result", RESULT))
        if (run_dir / name).is_file()
    ]
    return {
        "host": socket.gethostname(),
        "artifacts": files,
        "node": _ray_node(),
        "devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
    }


def _ray_node() -> str:
    try:  # imported here: an inline run never pays Ray's second of imports
        import ray

        return str(ray.get_runtime_context().get_node_id()) if ray.is_initialized() else ""
    except Exception:  # no Ray here, or not in a Ray worker: the host name says enough
        return ""


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


def _stop_check(job: InnerJob, pruned: threading.Event) -> Callable[[], bool]:
    """True once the trial is pruned, or the study is being cancelled (polled every few
    seconds)."""
    last = {"at": 0.0, "stop": False}

    def should_stop() -> bool:
        if pruned.is_set():
            return True
        if not last["stop"] and time.monotonic() - float(last["at"]) > CANCEL_POLL_S:
            last["at"] = time.monotonic()
            last["stop"] = get_study(job.storage, job.study).status in STOPPING
        return bool(last["stop"])

    return should_stop


def _progress_report(
    job: InnerJob,
    config: PrunerConfig,
    storage: optuna.storages.RDBStorage,
    trial_id: int,
    pruned: threading.Event,
) -> Callable[[int, dict[str, float]], None]:
    """Keep each evaluation in the trial's progress for this seed, then judge the trial
    (`service.tuning.search.pruning`); set `pruned` once it is pruned (the stop check then ends
    the run). A retried trial's progress, inherited from the trial it retries, is kept."""
    study = open_judged_study(job.study, storage, config)
    key = TrialRecord.progress_key(job.seed_index)
    evals: dict[str, float] = dict(storage.get_trial_user_attrs(trial_id).get(key, {}))

    def report(step: int, metrics: dict[str, float]) -> None:
        if CURVE_KEY not in metrics:
            return
        evals[str(step)] = float(metrics[CURVE_KEY])
        try:
            storage.set_trial_user_attr(trial_id, key, evals)
            if judge(study, storage, trial_id, job.seeds, config, job.prunable):
                pruned.set()
        except Exception as e:  # a database hiccup must not kill the run: the next evaluation
            log.warning("progress of trial %s not recorded: %s", trial_id, e)

    return report
