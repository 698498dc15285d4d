"""A study's wall time on one Ray node vs two (one CPU each, all on 127.0.0.1): what adding
a node to the cluster buys. Each configuration runs in its own process with its own cluster
(`ray.cluster_utils.Cluster`), the same synthetic study, the coordinator joining by address
as `shapetune serve --ray-address` does.

    .venv/bin/python bench/nodes_bench.py --out bench/results/nodes.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import machine

STUDY = {
    "name": "nodes",
    "task": {"name": "synthetic"},
    "methods": ["sparse", "uniform", "red"],
    "inner": {
        "steps": 24,
        "eval_interval": 8,
        "eval_prompts": 8,
        "ppo": {"rollout_batch": 8, "minibatch": 4, "epochs": 1},
    },
    "seeds": 2,
    "budget": 6,
    "sampler": "random",
    "executor": "ray",
    "resources": {"cpus": 1},
}


def one(nodes: int) -> dict[str, float]:
    """Run the study on a fresh cluster of `nodes` nodes; its wall time."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # loopback only
    from ray.cluster_utils import Cluster

    from service.tuning.spec.model import parse_spec
    from service.tuning.study.admission import executor_for
    from service.tuning.study.loop import run_study

    node = {"num_cpus": 1, "node_ip_address": "127.0.0.1"}
    cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
    for _ in range(nodes - 1):
        cluster.add_node(**node)
    cluster.wait_for_nodes()
    spec = parse_spec(STUDY)
    with tempfile.TemporaryDirectory() as home:
        executor = executor_for(spec, None, cluster.address)
        started = time.perf_counter()
        run_study(spec, f"sqlite:///{home}/studies.db", Path(home), executor)
        seconds = time.perf_counter() - started
    import ray

    ray.shutdown()  # the driver leaves first: Ray refuses to remove the node it is on
    cluster.shutdown()
    return {"nodes": nodes, "slots": executor.slots, "seconds": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench/results/nodes.json"))
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a child process's run
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one)))
        return
    rows = []
    for nodes in (1, 2):
        child = subprocess.run(
            [sys.executable, __file__, "--one", str(nodes)],
            capture_output=True,
            text=True,
            check=True,
        )
        rows.append(json.loads(child.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    result = {
        "study": STUDY,
        "machine": machine(),
        "runs": rows,
        "speedup": round(rows[0]["seconds"] / rows[1]["seconds"], 2),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"one node {rows[0]['seconds']} s, two nodes {rows[1]['seconds']} s")


if __name__ == "__main__":
    main()
