"""The study loop: one process (a coordinator) drives a study to its budget with Optuna's
ask-and-tell.

Optuna's RDB storage holds every trial (params, values, states, per-seed results in user
attributes); the coordinator holds only what is in flight. It owns the study through a
lease it renews; if it dies, the lease lapses, its trials stop heartbeating, and the next
coordinator (`shapetune resume`, or the service on start) fails them and re-queues their
parameters, whose inner runs continue from their checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import socket
import statistics
import threading
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from service.executor import Executor
from service.formatting import estimate
from service.store import studies as store
from service.store.artifacts import record_artifacts
from service.store.models import STOPPING, StudyStatus
from service.tuning.contracts import (
    InnerJob,
    InnerResult,
    TrialRecord,
    own_complete,
    sparse_arm,
    write,
    write_stored,
)
from service.tuning.optuna_storage import opened_storage
from service.tuning.search import space
from service.tuning.search.objective import (
    GOLD_KEY,
    directions,
    incumbent,
    kl_excess,
    objective_value,
    primary,
)
from service.tuning.search.pruning import pruner_config
from service.tuning.search.samplers import make_sampler
from service.tuning.search.warm import check_warm_start, warm_copies
from service.tuning.spec.model import StudySpec, same_study
from service.tuning.study.inner import run_inner

log = logging.getLogger(__name__)


class StudyBusy(RuntimeError):
    """Another live coordinator holds the study."""


class LeaseLost(RuntimeError):
    """This coordinator's lease was taken over; it must stop touching the study."""


@dataclass(frozen=True)
class Timing:
    """Fault-detection periods (seconds). Tests shorten them."""

    heartbeat: float = 10.0
    grace: float = 60.0
    """A trial whose inner runs have not heartbeated for this long is failed and retried."""
    lease: float = 60.0
    poll: float = 1.0


@dataclass
class Progress:
    done: int
    budget: int
    running: int
    best: float | None
    best_weights: dict[str, float] | None
    sparse: float | None
    last: str = ""


@dataclass
class _InFlight:
    trial: optuna.Trial
    weights: dict[str, float]
    knobs: dict[str, float]
    results: dict[int, InnerResult] = field(default_factory=dict)


def run_study(
    spec: StudySpec,
    url: str,
    home: Path,
    executor: Executor,
    *,
    timing: Timing | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    holder: str | None = None,
    owner: str = "",
) -> Progress:
    """Create the study if it is new (for `owner`), or take it over, and drive it to its
    budget."""
    timing = timing or Timing()
    holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    try:
        store.create_study(url, spec.name, spec.stored(), owner)
    except store.StudyExists:
        if not same_study(store.get_study(url, spec.name).spec, spec):
            raise
    if not store.acquire_lease(url, spec.name, holder, timing.lease):
        who = store.lease_holder(url, spec.name)
        raise StudyBusy(
            f"study {spec.name!r} is coordinated by {who[0] if who else '?'} (lease until "
            f"{who[1] if who else '?'} UTC); wait for it, or cancel it"
        )
    lost = threading.Event()
    stop_renewing = threading.Event()
    renewer = threading.Thread(
        target=_renew, args=(url, spec.name, holder, timing.lease, lost, stop_renewing), daemon=True
    )
    renewer.start()
    # A cancel that came while this coordinator was taking the study up stands: the loop
    # sees it on its first turn and ends the study cancelled.
    store.set_status(url, spec.name, StudyStatus.RUNNING, "", unless=STOPPING)
    try:
        with opened_storage(url, timing.heartbeat, timing.grace) as storage:
            progress = _Loop(spec, url, home, executor, storage, timing, lost, on_progress).run()
    except BaseException as e:
        executor.shutdown()
        if not (isinstance(e, LeaseLost) or lost.is_set()):  # the status is the new holder's
            store.set_status(url, spec.name, StudyStatus.INTERRUPTED, f"{type(e).__name__}: {e}")
        raise
    finally:
        stop_renewing.set()
        renewer.join()
        if not lost.is_set():
            store.release_lease(url, spec.name, holder)
    return progress


def _renew(
    url: str, name: str, holder: str, ttl: float, lost: threading.Event, stop: threading.Event
) -> None:
    while not stop.wait(ttl / 3):
        try:
            if not store.acquire_lease(url, name, holder, ttl):
                lost.set()
                return
        except store.StoreError as e:  # the database blinked: try again before the lease ends
            log.warning("lease renewal of %s failed: %s", name, e)


class _Loop:
    def __init__(
        self,
        spec: StudySpec,
        url: str,
        home: Path,
        executor: Executor,
        storage: optuna.storages.RDBStorage,
        timing: Timing,
        lost: threading.Event,
        on_progress: Callable[[Progress], None] | None,
    ) -> None:
        self.spec, self.url, self.home, self.executor = spec, url, home, executor
        self.timing, self.lost, self.on_progress = timing, lost, on_progress
        self.storage = storage
        self.study = _open_study(spec, self.storage, url)
        self.sampler_config: dict[str, Any] = self.study.user_attrs["sampler"]
        self.pruner = pruner_config(spec)
        self.in_flight: dict[int, _InFlight] = {}  # trial number -> its runs
        self.queue: list[InnerJob] = []  # jobs waiting for a free worker slot
        self.failures = sum(
            1 for t in self.study.get_trials(deepcopy=False) if TrialRecord.from_trial(t).failed_for
        )
        _retry_orphans(self.study)

    def run(self) -> Progress:
        while True:
            if self.lost.is_set():
                raise LeaseLost(f"another coordinator took study {self.spec.name!r} over")
            status = store.get_study(self.url, self.spec.name).status
            if status in STOPPING:
                return self._finish(StudyStatus.CANCELLED, "cancelled by request")
            for flight in self.in_flight.values():  # queued runs have no worker beating yet
                self.storage.record_heartbeat(flight.trial._trial_id)
            optuna.storages.fail_stale_trials(self.study)
            done = len(own_complete(self.study.get_trials(deepcopy=False)))
            if done >= self.spec.budget and not self.in_flight:
                return self._finish(StudyStatus.COMPLETED, "")
            if self.failures >= self.spec.max_failures:
                return self._finish(
                    StudyStatus.FAILED,
                    f"{self.failures} trials failed (max_failures); see their reasons",
                )
            while done + len(self.in_flight) < self.spec.budget and not self.queue:
                self._start_trial()
            while self.queue and self.executor.running() < self.executor.slots:
                self.executor.submit(run_inner, self.queue.pop(0))
            for outcome in self.executor.wait(self.timing.poll):
                self._record(outcome.job, outcome.result, outcome.error)

    def _start_trial(self) -> None:
        # Trials started so far, running ones included: trials asked side by side for
        # parallel workers get samplers of different seeds, hence different proposals.
        started = len(
            self.study.get_trials(deepcopy=False, states=(*_FINISHED, TrialState.RUNNING))
        )
        self.study.sampler = make_sampler(self.sampler_config, started)
        trial = self.study.ask()
        weights, knobs = space.suggest(trial, self.spec)
        write(trial, TrialRecord(weights=weights, knobs=knobs))
        self.in_flight[trial.number] = _InFlight(trial, weights, knobs)
        runs = run_key(trial.params)
        # Control arms run to the end: every proposal is compared with them, so a pruned
        # baseline would leave the study without its yardstick. Pruning is for proposals.
        prunable = not TrialRecord.from_attrs(trial.user_attrs).label
        for k in range(self.spec.seeds):
            # Named by the parameters, not the trial: a retried trial (a new number, the
            # same parameters) continues from the checkpoint.
            run_dir = self.home / "studies" / self.spec.name / "runs" / runs / f"seed{k}"
            config = self.spec.train_config(weights, knobs, self.spec.seed + k, run_dir)
            self.queue.append(
                InnerJob(
                    study=self.spec.name,
                    storage=self.url,
                    trial_id=trial._trial_id,
                    trial_number=trial.number,
                    seed_index=k,
                    config=config,
                    home=str(self.home),
                    heartbeat_s=self.timing.heartbeat,
                    objective=self.spec.objective,
                    target=self.spec.target,
                    pruner=self.pruner,
                    seeds=self.spec.seeds,
                    prunable=prunable,
                    credit=k == 0,  # the trial keeps the first seed's samples
                    gpus=self.spec.resources.gpus,
                )
            )

    def _record(self, job: InnerJob, result: InnerResult | None, error: str | None) -> None:
        flight = self.in_flight.get(job.trial_number)
        if flight is None:
            return
        if result and result.artifacts:
            record_artifacts(
                self.url,
                self.spec.name,
                job.trial_number,
                job.seed_index,
                result.host,
                [asdict(a) for a in result.artifacts],
            )
        lost = InnerResult(job.seed_index, host="", error=error or "no result")
        flight.results[job.seed_index] = result or lost
        if len(flight.results) < self.spec.seeds:
            return
        del self.in_flight[job.trial_number]
        self._tell(flight)

    def _tell(self, flight: _InFlight) -> None:
        trial, seeds = flight.trial, [flight.results[k] for k in sorted(flight.results)]
        record = TrialRecord.of_results(seeds)
        write(trial, record)
        if record.failed_for:
            self.study.tell(trial, state=TrialState.FAIL)
            self.failures += 1
            log.warning("trial %d failed: %s", trial.number, record.failed_for)
            self._report(f"trial {trial.number} failed: {record.failed_for}")
            return
        values = record.seed_values
        if self.spec.constraints:  # Optuna's constraint, read by the samplers and by us
            trial.set_constraint("kl_max", kl_excess(self.spec.constraints.kl_max, record.final))
        if any(r.pruned for r in seeds):  # kept, not credited: the incumbent is COMPLETE
            self.study.tell(trial, state=TrialState.PRUNED)
            at = TrialRecord.from_trial(self.storage.get_trial(trial._trial_id)).pruned_at
            ran = ", ".join(str(r.steps) for r in seeds)
            self._report(f"trial {trial.number} pruned at step {at} (its seeds ran {ran} steps)")
            return
        if any(r.stopped_early for r in seeds):  # not pruned: the study was cancelled
            write(trial, TrialRecord(stopped_for="cancelled before its inner runs finished"))
            self.study.tell(trial, state=TrialState.FAIL)
            return
        told = [statistics.fmean(values)]
        if "gold" in self.spec.objectives:
            gold = [gold_value(self.spec.objective, r) for r in seeds]
            write(trial, TrialRecord(gold_values=gold))
            told.append(statistics.fmean(gold))
        if not all(math.isfinite(v) for v in values + told):
            write(trial, TrialRecord(failed_for=f"non-finite objective values {values + told}"))
            self.study.tell(trial, state=TrialState.FAIL)
            self.failures += 1
            return
        self.study.tell(trial, told)
        self._report(f"trial {trial.number}: {estimate(told[0], record.stderr)}")

    def _report(self, last: str) -> None:
        if self.on_progress:
            self.on_progress(self.progress(last))

    def progress(self, last: str = "") -> Progress:
        return summarize(self.study, self.spec, running=len(self.in_flight), last=last)

    def _finish(self, status: str, message: str) -> Progress:
        self.executor.shutdown()
        for flight in self.in_flight.values():  # cancelled mid-run
            write(flight.trial, TrialRecord(stopped_for=message or status))
            self.study.tell(flight.trial, state=TrialState.FAIL)
        self.in_flight.clear()
        store.set_status(self.url, self.spec.name, status, message)
        return self.progress(status)


_FINISHED = (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)


def _open_study(spec: StudySpec, storage: optuna.storages.RDBStorage, url: str) -> optuna.Study:
    study = optuna.create_study(
        study_name=spec.name,
        storage=storage,
        directions=directions(spec.objective, spec.objectives),
        load_if_exists=True,
    )
    if "spec" not in study.user_attrs:  # new: record how to rebuild it, queue the baselines
        study.set_user_attr("spec", spec.stored())
        sampler: dict[str, Any] = {
            "name": spec.sampler,
            "seed": spec.seed,
            "startup_trials": spec.startup_trials,
        }
        if spec.sampler == "qnei":
            sampler["noise"] = spec.noise
        study.set_user_attr("sampler", sampler)
        copies, reused = warm_copies(spec, check_warm_start(spec, url))
        study.add_trials(copies)
        if spec.control_arms:
            for label, params in space.control_arms(spec):
                if label not in reused:
                    study.enqueue_trial(params, user_attrs=TrialRecord(label=label).to_user_attrs())
    return study


def _retry_orphans(study: optuna.Study) -> None:
    """RUNNING trials when a coordinator takes a study over: it holds the lease, so they
    belong to a dead one and nobody runs them. Fail them now and re-queue their parameters
    (as for a stale heartbeat, without waiting out the grace period), so that no proposal,
    a control arm least of all, is lost to the crash."""
    storage = study._storage
    retry = storage.get_heartbeat_stale_trial_callback()  # type: ignore[attr-defined]
    for t in study.get_trials(deepcopy=True, states=(TrialState.RUNNING,)):
        write_stored(storage, t._trial_id, TrialRecord(stopped_for="its coordinator died; retried"))
        if storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL) and retry:
            retry(study, t)  # `t` as it was: the retry inherits no stop reason


def run_key(params: dict[str, Any]) -> str:
    """The name of the run folders of a trial's parameters (a retry's too)."""
    blob = json.dumps({k: round(float(v), 12) for k, v in sorted(params.items())})
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def gold_value(objective: str, result: InnerResult) -> float:
    """The run's gold objective: `objective`'s measure of the gold judge's curve."""
    return objective_value(objective, result.curve, result.steps, None, key=GOLD_KEY)


def summarize(study: optuna.Study, spec: StudySpec, running: int = 0, last: str = "") -> Progress:
    """Trials done of the budget, the incumbent (best mean over seeds) and the sparse arm."""
    complete = own_complete(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    best = incumbent(complete, spec.objective)
    sparse = sparse_arm(complete)
    return Progress(
        done=len(complete),
        budget=spec.budget,
        running=running,
        best=None if best is None else primary(best),
        best_weights=None if best is None else TrialRecord.from_trial(best).weights,
        sparse=None if sparse is None else primary(sparse),
        last=last,
    )
