"""GPU placement without a GPU: Ray accepts logical GPUs, so a node with `num_gpus=2` and a
spec asking `resources.gpus: 1` must run two inner runs at once, each given its own
device; on a machine without CUDA each run then fails saying so (never trains on the CPU in
a GPU's slot). Its own Ray cluster, in a subprocess: the session's has no GPUs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.service.conftest import TINY_INNER

SCRIPT = """
import json, os, sys
from pathlib import Path

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
import ray

ray.init(address="local", num_cpus=2, num_gpus=2, include_dashboard=False,
         log_to_driver=False, configure_logging=False)
from service.tuning.study.admission import executor_for
from service.tuning.spec.model import parse_spec
from service.tuning.study.loop import run_study

spec = parse_spec(json.loads(sys.argv[1]))
home = Path(sys.argv[2])
executor = executor_for(spec, None, None)
print("slots", executor.slots, flush=True)
run_study(spec, f"sqlite:///{home / 'studies.db'}", home, executor)
"""


@pytest.mark.e2e
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: runs would train")
def test_two_runs_share_two_logical_gpus_and_say_there_is_no_cuda(tmp_path: Path) -> None:
    spec: dict[str, Any] = {
        "name": "gpus",
        "task": {"name": "synthetic"},
        "methods": ["sparse"],
        "inner": TINY_INNER,
        "seeds": 2,
        "budget": 1,
        "control_arms": False,
        "max_failures": 1,
        "sampler": "random",
        "executor": "ray",
        "resources": {"cpus": 1, "gpus": 1},
    }
    ran = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(spec), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert "slots 2" in ran.stdout  # two GPUs, one per run: two runs at a time

    from service.read import model as read

    trial = read.trial(f"sqlite:///{tmp_path / 'studies.db'}", "gpus", 0)
    assert trial.state == "FAIL"
    assert "was given 1 GPU(s)" in trial.failed_for and "sees no CUDA device" in trial.failed_for
    assert "install a CUDA build of torch" in trial.failed_for
    devices = sorted(p.devices for p in trial.placements)
    assert devices == ["0", "1"]  # each run its own device, at the same time
    assert all(p.node for p in trial.placements)  # the Ray node of each run is recorded
