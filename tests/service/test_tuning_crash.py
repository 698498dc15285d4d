"""Crash safety, on SQLite and PostgreSQL: kill -9 the coordinator, kill -9 an inner-run
worker, and four workers writing to one study at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import update

from service.store import studies as store
from service.store.db import session_scope
from service.store.models import LeaseModel
from service.tuning.optuna_storage import open_storage
from service.tuning.spec.model import parse_spec
from service.tuning.study.loop import Progress, Timing, run_study

FAST = Timing(heartbeat=1, grace=3, lease=4, poll=0.2)
Spec = Callable[..., dict[str, Any]]


def _trials(storage: optuna.storages.RDBStorage, name: str) -> list[FrozenTrial]:
    try:
        study_id = storage.get_study_id_from_name(name)
    except KeyError:
        return []
    return storage.get_all_trials(study_id, deepcopy=False)


def _wait_for(what: str, ok: Callable[[], bool], timeout_s: float, poll_s: float = 0.05) -> None:
    deadline = time.monotonic() + timeout_s
    while not ok():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(poll_s)


def _expire_lease(url: str, name: str) -> None:
    """What waiting out the dead coordinator's lease (60 s by default) comes to."""
    with session_scope(url) as s:
        s.execute(
            update(LeaseModel)
            .where(LeaseModel.study_name == name)
            .values(expires_at=store.utcnow() - timedelta(seconds=1))
        )


def _signature(t: FrozenTrial) -> tuple[tuple[str, float], ...]:
    return tuple(sorted(t.params.items()))


@pytest.mark.e2e
def test_resume_finishes_a_study_whose_coordinator_was_killed(
    storage_url: str, tmp_path: Path, make_spec: Spec, shapetune_bin: str
) -> None:
    budget = 6
    spec = make_spec(budget=budget, seeds=2, storage=storage_url, max_failures=1)
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    home, name = tmp_path / "home", spec["name"]
    storage = open_storage(storage_url)  # the schema exists before either process starts
    log = (tmp_path / "run.log").open("w")
    cmd = [shapetune_bin, "run", str(spec_file), "--home", str(home), "--executor", "inline"]
    coordinator = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:

        def two_done_one_running() -> bool:
            assert coordinator.poll() is None, (tmp_path / "run.log").read_text()
            count = Counter(t.state for t in _trials(storage, name))
            return count[TrialState.COMPLETE] >= 2 and count[TrialState.RUNNING] >= 1

        _wait_for("2 completed trials and a running one", two_done_one_running, 120)
    finally:
        coordinator.send_signal(signal.SIGKILL)
        coordinator.wait()
    before = {t.number: t for t in _trials(storage, name)}
    orphans = [t for t in before.values() if t.state == TrialState.RUNNING]
    done_before = {n: t for n, t in before.items() if t.state == TrialState.COMPLETE}
    assert len(orphans) == 1 and 2 <= len(done_before) < budget
    holder = store.lease_holder(storage_url, name)
    assert holder is not None and f":{coordinator.pid}:" in holder[0]  # the dead one's

    resume = [shapetune_bin, "resume", name, "--home", str(home), "--storage", storage_url]
    if storage_url.startswith("sqlite"):  # refused while the dead coordinator's lease runs
        busy = subprocess.run(resume, capture_output=True, text=True, timeout=120)
        assert busy.returncode == 2, busy.stdout + busy.stderr
        assert f":{coordinator.pid}:" in busy.stdout.replace("\n", "")
    _expire_lease(storage_url, name)
    resumed = subprocess.run(resume, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr

    after = {t.number: t for t in _trials(storage, name)}
    complete = [t for t in after.values() if t.state == TrialState.COMPLETE]
    assert len(complete) == budget
    assert not [t for t in after.values() if t.state == TrialState.RUNNING]
    for n, t in done_before.items():  # nothing completed is lost or changed
        assert after[n].state == TrialState.COMPLETE and after[n].value == t.value
        assert after[n].params == t.params
    orphan = after[orphans[0].number]
    assert orphan.state == TrialState.FAIL and orphan.user_attrs["stopped_for"]
    retries = [
        t
        for t in after.values()
        if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == orphan.number
    ]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    # the same params (a coordinator killed between two `suggest`s left only the first)
    assert orphan.params.items() <= retries[0].params.items()
    assert retries[0].user_attrs.get("label") == orphan.user_attrs.get("label")
    assert "stopped_for" not in retries[0].user_attrs
    # every proposal completed once: the retry replaces its orphan, the arms are distinct
    assert max(Counter(_signature(t) for t in complete).values()) == 1
    labels = Counter(t.user_attrs.get("label") for t in complete)
    assert labels["pure sparse"] == labels["pure uniform"] == labels["pure red"] == 1
    record = store.get_study(storage_url, name)
    assert record.status == "completed"  # the orphan did not count toward max_failures: 1
    assert store.lease_holder(storage_url, name) is None


def _ray_run_inner_pids() -> list[int]:
    """Ray names a worker process after the task it executes: `ray::run_inner`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if cmdline.startswith(b"ray::run_inner"):
            pids.append(int(entry.name))
    return pids


@contextmanager
def _study_in_thread(*args: Any, **kwargs: Any) -> Iterator[dict[str, Any]]:
    """run_study in a background thread; the dict gets its `progress` or its `error`."""
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["progress"] = run_study(*args, **kwargs)
        except BaseException as e:
            out["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    try:
        yield out
    finally:
        thread.join(timeout=300)
        assert not thread.is_alive(), "the study did not finish"
        if "error" in out:
            raise out["error"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.e2e
@pytest.mark.usefixtures("ray_cluster")
def test_a_killed_worker_is_retried_and_the_trial_completes(
    storage_url: str, tmp_path: Path, make_spec: Spec
) -> None:
    from service.executor.ray_executor import RayExecutor

    # 24 steps after the first checkpoint at step 2: a window wide enough to hit even when
    # other jobs load the machine and each poll below is slow.
    inner = {"steps": 24, "eval_interval": 8, "eval_prompts": 8, "checkpoint_interval": 2, "ppo": {"rollout_batch": 8, "minibatch": 4, "epochs": 1}}  # fmt: skip
    spec = parse_spec(make_spec(budget=3, seeds=1, executor="ray", inner=inner, max_failures=1))
    storage = open_storage(storage_url)
    killed: dict[str, Any] = {}
    with _study_in_thread(
        spec, storage_url, tmp_path, RayExecutor(cpus=1, workers=1), timing=FAST
    ) as out:

        def a_worker_mid_trial() -> bool:
            """A Ray worker in `run_inner` whose run has saved a checkpoint: mid-training."""
            assert "error" not in out, out
            running = [t for t in _trials(storage, spec.name) if t.state == TrialState.RUNNING]
            saved = list((tmp_path / "studies" / spec.name).glob("runs/*/seed0/checkpoint.pt"))
            pids = _ray_run_inner_pids()
            # trials 0 .. n-1 each left a checkpoint; one more is the running trial n's
            if not (pids and running and len(saved) > running[0].number):
                return False
            killed.update(pid=pids[0], trial=running[0].number)
            os.kill(pids[0], signal.SIGKILL)
            return True

        _wait_for("a Ray worker mid-run", a_worker_mid_trial, 300, poll_s=0.02)
        _wait_for("the worker to die", lambda: not _alive(killed["pid"]), 10)

    progress: Progress = out["progress"]
    assert progress.done == 3 and progress.last == "completed"
    final = _trials(storage, spec.name)
    assert [t.state for t in final] == [TrialState.COMPLETE] * 3  # retried by Ray, not failed
    assert final[killed["trial"]].user_attrs["seed_values"]
    assert store.get_study(storage_url, spec.name).status == "completed"


@pytest.mark.usefixtures("ray_cluster")
@pytest.mark.parametrize(
    "storage_url",
    # PostgreSQL under four writers is covered by the four-process test below; this one
    # adds Ray end to end, and four fresh workers importing torch take a while.
    ["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)],
    indirect=True,
)
@pytest.mark.e2e
def test_four_ray_workers_write_to_one_study(
    storage_url: str, tmp_path: Path, make_spec: Spec
) -> None:
    import ray

    from service.executor.ray_executor import RayExecutor

    gate = _gate_class().remote(4)

    class GatedRayExecutor(RayExecutor):
        """Holds the study's first four runs on their Ray workers until all four are there:
        four in flight at once, however fast the machine (an unheld tiny run can end before
        the loop hands Ray the next)."""

        def submit(self, fn: Any, job: Any) -> None:
            super().submit(_gated(fn, gate), job)

    budget = 8
    spec = parse_spec(
        make_spec(budget=budget, seeds=1, executor="ray", resources={"cpus": 0.5, "workers": 4})
    )
    executor = GatedRayExecutor(cpus=0.5, workers=4)
    assert executor.slots == 4
    with _study_in_thread(spec, storage_url, tmp_path, executor, timing=FAST) as out:
        pass
    assert out["progress"].done == budget
    final = _trials(open_storage(storage_url), spec.name)
    assert [t.state for t in final] == [TrialState.COMPLETE] * budget
    assert max(Counter(_signature(t) for t in final).values()) == 1
    # Four runs were on Ray workers at once, and every trial's result came from a Ray worker.
    assert ray.get(gate.peak.remote()) == 4
    assert all(p["node"] for t in final for p in t.user_attrs["placements"])


WORKER = """
import sys, threading, time
import optuna
from service.store import studies as store
from service.tuning.optuna_storage import open_storage

url, name, index, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
storage = open_storage(url, heartbeat_s=1, grace_s=600)
study = optuna.load_study(
    study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler(seed=index)
)
held = 0
for i in range(n):
    trial = study.ask()
    stop = threading.Event()

    def beat(trial_id=trial._trial_id):
        while not stop.is_set():
            storage.record_heartbeat(trial_id)
            time.sleep(0.005)

    beater = threading.Thread(target=beat)
    beater.start()
    x = trial.suggest_float("x", 0, 1)
    trial.set_user_attr("worker", index)
    held += store.acquire_lease(url, name, f"worker{index}", 600)
    store.set_status(url, name, "running", f"worker {index} trial {i}")
    time.sleep(0.01)
    stop.set()
    beater.join()
    study.tell(trial, x)
print(held)
"""


def test_four_processes_heartbeat_and_tell_on_one_study_without_lock_errors(
    storage_url: str, study_name: str
) -> None:
    """Four processes at once: trials asked, heartbeated, told; leases and statuses
    written. Any database error ends a process with a traceback."""
    per_worker = 8
    store.create_study(storage_url, study_name, {"budget": 4 * per_worker})
    optuna.create_study(study_name=study_name, storage=open_storage(storage_url))
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, storage_url, study_name, str(i), str(per_worker)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    outputs = [w.communicate(timeout=300) for w in workers]
    for w, (_, stderr) in zip(workers, outputs, strict=True):
        assert w.returncode == 0, stderr
        assert "locked" not in stderr and "Error" not in stderr, stderr
    held = [int(stdout.split()[-1]) for stdout, _ in outputs]
    assert sorted(held) == [0, 0, 0, per_worker]  # one lease holder throughout
    final = _trials(open_storage(storage_url), study_name)
    assert len(final) == 4 * per_worker
    assert all(t.state == TrialState.COMPLETE for t in final)
    assert Counter(t.user_attrs["worker"] for t in final) == dict.fromkeys(range(4), per_worker)
    assert sorted(t.number for t in final) == list(range(4 * per_worker))


def _gated(fn: Any, gate: Any) -> Any:
    """`fn` that first waits, on its Ray worker, until `gate` opens."""
    import ray

    def run(job: Any) -> Any:
        gate.arrive.remote()
        deadline = time.monotonic() + 120  # a loop that never fills the workers fails below
        while not ray.get(gate.open.remote()) and time.monotonic() < deadline:
            time.sleep(0.05)
        try:
            return fn(job)
        finally:
            gate.leave.remote()

    return run


def _gate_class() -> Any:
    import ray

    @ray.remote(num_cpus=0)
    class Gate:
        """Counts the runs on Ray workers; opens once `n` have arrived, then stays open."""

        def __init__(self, n: int) -> None:
            self.n, self.arrived, self.inside, self.most = n, 0, 0, 0

        def arrive(self) -> None:
            self.arrived += 1
            self.inside += 1
            self.most = max(self.most, self.inside)

        def leave(self) -> None:
            self.inside -= 1

        def open(self) -> bool:
            return self.arrived >= self.n

        def peak(self) -> int:
            return self.most

    return Gate
