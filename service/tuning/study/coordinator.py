"""The service's coordinator: a thread that treats the study database as its queue.

It drives one study at a time with `run_study` (a study's own inner runs already fill the
workers; studies queue behind each other): first the queued ones, oldest first, then any
whose coordinator died (running, lease lapsed), so a restarted service resumes its work by
itself. Another coordinator on the same database is safe: the study lease decides who
drives, the other gets `StudyBusy` and moves on.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

from service.executor import Executor
from service.executor.base import Job, JobFn, Outcome
from service.redaction import safe_url
from service.store import studies as store
from service.store.db import TRANSIENT, is_transient
from service.store.models import StudyStatus
from service.tuning.spec.model import SpecError, parse_spec
from service.tuning.spec.text import cut
from service.tuning.study.admission import admit, executor_for
from service.tuning.study.loop import LeaseLost, StudyBusy, Timing, run_study

log = logging.getLogger(__name__)


class ServiceStopping(RuntimeError):
    """The service is shutting down; the study goes back to the queue."""


@dataclass(frozen=True)
class CoordinatorConfig:
    url: str
    home: Path
    timing: Timing
    poll_s: float = 2.0
    executor: str | None = None
    """Overrides each spec's executor (ray or inline)."""
    ray_address: str | None = None


class Coordinator:
    def __init__(self, config: CoordinatorConfig) -> None:
        self.config = config
        self.holder = f"serve:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.stop_event = threading.Event()
        self.current: str | None = None
        self._thread = threading.Thread(target=self._serve, name="coordinator", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float) -> None:
        """Ask the loop to stop and wait for it. A study it drives returns to the queue after
        the inner runs in flight end (an inline run cannot be cut short); past `timeout_s`
        the thread dies with the process and the study's lease lapses instead."""
        self.stop_event.set()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.warning("coordinator still driving %s at exit; its lease will lapse", self.current)

    def _serve(self) -> None:
        log.info("coordinator %s watching %s", self.holder, safe_url(self.config.url))
        backoff = Backoff(self.config.poll_s)
        while not self.stop_event.is_set():
            try:
                names = store.claimable_studies(self.config.url)
                for name in names:
                    if self.stop_event.is_set():
                        return
                    self._drive_one(name)
            except (store.StoreError, *TRANSIENT) as e:  # the database blinked: try again
                delay = backoff.next()
                log.warning("coordinator: %s; retrying in %.1f s", e, delay)
                self.stop_event.wait(delay)
                continue
            backoff.reset()
            if not names:
                self.stop_event.wait(self.config.poll_s)

    def _drive_one(self, name: str) -> None:
        """Drive one study. An error that can pass goes up to be retried with backoff; any
        other fails the study with the reason (logged once, its traceback at debug), so it
        never comes back to the queue to break again."""
        self.current = name
        try:
            self.drive(name)
        except Exception as e:
            if is_transient(e):
                raise
            reason = f"internal error: {type(e).__name__}: {cut(str(e))}"
            log.error("study %s failed: %s", name, reason)
            log.debug("study %s failed", name, exc_info=True)
            store.set_status(self.config.url, name, StudyStatus.FAILED, reason)
        finally:
            self.current = None

    def drive(self, name: str) -> None:
        """Run one study to its end (or until the service stops)."""
        url = self.config.url
        record = store.get_study(url, name)
        if record.status == StudyStatus.CANCELLING:  # its coordinator died before stopping it
            if store.acquire_lease(url, name, self.holder, self.config.timing.lease):
                store.set_status(url, name, StudyStatus.CANCELLED, "cancelled by request")
                store.release_lease(url, name, self.holder)
            return
        try:  # admitted again: the machine may have changed since (a task's files, GPUs)
            spec = parse_spec(record.spec)
            admit(spec, self.config.home, url, self.config.executor)
            executor = executor_for(spec, self.config.executor, self.config.ray_address)
        except SpecError as e:
            log.warning("study %s cannot start: %s", name, "; ".join(e.problems))
            store.set_status(
                url, name, StudyStatus.FAILED, f"cannot start: {'; '.join(e.problems)}"
            )
            return
        log.info("coordinator %s drives study %s", self.holder, name)
        try:
            final = run_study(
                spec,
                url,
                self.config.home,
                _Stoppable(executor, self.stop_event),
                timing=self.config.timing,
                holder=self.holder,
            )
            log.info("study %s: %s, %d/%d trials", name, final.last, final.done, final.budget)
        except StudyBusy as e:  # another coordinator won the lease
            log.info("%s", e)
        except LeaseLost as e:
            log.warning("%s", e)
        except ServiceStopping:
            store.set_status(
                url, name, StudyStatus.QUEUED, "the service stopped; it continues on restart"
            )


class Backoff:
    """Waits that double from `first_s` up to `max_s` while an error keeps passing."""

    def __init__(self, first_s: float, max_s: float = 60.0) -> None:
        self.first_s, self.max_s, self.delay = first_s, max_s, first_s

    def next(self) -> float:
        delay, self.delay = self.delay, min(self.delay * 2, self.max_s)
        return delay

    def reset(self) -> None:
        self.delay = self.first_s


class _Stoppable(Executor):
    """An executor that raises `ServiceStopping` once the service stops, which ends
    `run_study` at the next moment it waits for or starts an inner run."""

    def __init__(self, inner: Executor, stop: threading.Event) -> None:
        self.inner, self.stop, self.slots = inner, stop, inner.slots

    def submit(self, fn: JobFn, job: Job) -> None:
        if self.stop.is_set():
            raise ServiceStopping("the service is stopping")
        self.inner.submit(fn, job)

    def wait(self, timeout_s: float) -> list[Outcome]:
        if self.stop.is_set():  # hand over what finished, so that its trial is recorded
            done = self.inner.wait(0)
            if done:
                return done
            raise ServiceStopping("the service is stopping")
        return self.inner.wait(timeout_s)

    def running(self) -> int:
        return self.inner.running()

    def shutdown(self) -> None:
        self.inner.shutdown()
