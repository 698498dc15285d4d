"""The cluster topology without containers: PostgreSQL, a Ray head and a second Ray node (their
own processes, on 127.0.0.1), `shapetune serve --ray-address`, and a submitted study. Inner
runs land on both nodes; the second node is killed (SIGKILL) mid-trial; its run is retried
on the head from its checkpoint, and the study ends with exactly its budget."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.service.conftest import TINY_INNER
from tests.service.test_api import TOKEN, serve_process, wait_for

HERE = Path(__file__).parent


@pytest.fixture
def two_nodes() -> Iterator[tuple[dict[str, Any], subprocess.Popen[str]]]:
    process = subprocess.Popen(
        [sys.executable, str(HERE / "multinode_cluster.py")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line, "the two-node cluster did not start"
        yield json.loads(line), process
    finally:
        if process.poll() is None:
            assert process.stdin is not None
            process.stdin.write("stop\n")
            process.stdin.flush()
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.mark.e2e
def test_a_study_survives_losing_a_node(
    two_nodes: tuple[dict[str, Any], subprocess.Popen[str]],
    pg_databases: Callable[[], str],
    tmp_path: Path,
) -> None:
    cluster, process = two_nodes
    env = {
        **os.environ,
        "SHAPETUNE_TOKEN": TOKEN,
        "SHAPETUNE_HOME": str(tmp_path / "home"),  # one folder both nodes see: one machine
        "SHAPETUNE_STORAGE": pg_databases(),
        "SHAPETUNE_RAY_ADDRESS": cluster["address"],
        "SHAPETUNE_HEARTBEAT_S": "1",
        "SHAPETUNE_GRACE_S": "30",  # a retried run heartbeats again well within this
        "SHAPETUNE_POLL_S": "0.2",
        # The driver's own address: loopback, as the nodes' (never the machine's others).
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    }
    # Two seeds a trial, one CPU a run, one CPU a node: each trial's runs on both nodes.
    # Runs of 150 steps (seconds each) checkpointing every 2: the kill lands after a
    # checkpoint and well before the run's end, on an idle machine too.
    inner = {**TINY_INNER, "steps": 150, "eval_interval": 50, "checkpoint_interval": 2}
    body = {
        "name": "two-nodes",
        "task": {"name": "synthetic"},
        "methods": ["sparse", "uniform"],
        "inner": inner,
        "seeds": 2,
        "budget": 3,
        "sampler": "random",
        "executor": "ray",
        "resources": {"cpus": 1},
    }
    headers = {"Authorization": f"Bearer {TOKEN}"}
    started = time.monotonic()
    with serve_process(env, tmp_path / "serve.log") as (_, base):
        api = f"{base}/api/v1/studies"
        created = httpx.post(api, json=body, headers=headers, timeout=60)
        assert created.status_code == 201, created.text

        def study() -> dict[str, Any]:
            reply = httpx.get(f"{api}/two-nodes", headers=headers, timeout=30)
            assert reply.status_code == 200, reply.text
            found: dict[str, Any] = reply.json()
            return found

        def second_trial_checkpointed() -> bool:
            # Trial 0 done; trial 1's runs (both nodes) have checkpoints: kill mid-run.
            runs = list((tmp_path / "home" / "studies" / "two-nodes" / "runs").glob("*/seed*"))
            done = study()["done"]
            return done == 1 and sum((r / "checkpoint.pt").is_file() for r in runs) >= 4

        wait_for(second_trial_checkpointed, timeout_s=300)
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write("kill\n")
        process.stdin.flush()
        assert process.stdout.readline().strip() == "killed"
        finished = wait_for(lambda: study()["status"] in ("completed", "failed"), 300)
        assert finished
        final = study()
        trials = [
            httpx.get(f"{api}/two-nodes/trials/{n}", headers=headers, timeout=30).json()
            for n in range(3)
        ]
    seconds = time.monotonic() - started
    assert final["status"] == "completed", final["message"]
    assert final["done"] == body["budget"]
    assert [t["state"] for t in trials] == ["COMPLETE"] * 3
    placed = [(t["number"], p) for t in trials for p in t["placements"]]
    first = {p["node"] for n, p in placed if n == 0}
    assert first == {cluster["head"], cluster["second"]}  # the runs landed on both nodes
    # Trial 1 was mid-run on both nodes at the kill: the run the dead node held was retried
    # by Ray on the head, from its checkpoint, not from step 0.
    retried = [p for n, p in placed if n == 1 and p["resumed_from"] > 0]
    assert retried and all(p["node"] == cluster["head"] for p in retried), placed
    print(
        f"multi-node study: {seconds:.0f} s; the lost run resumed at step",
        retried[0]["resumed_from"],
    )
    after = {p["node"] for n, p in placed if n == 2}
    assert after == {cluster["head"]}  # nothing more on the dead node
