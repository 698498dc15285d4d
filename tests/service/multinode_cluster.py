"""A two-node Ray cluster on 127.0.0.1 for `test_multinode.py`, in its own process (the test
session's own Ray cluster lives in the pytest process). Prints one JSON line with the
cluster's address and both node ids, then takes commands on stdin: `kill` SIGKILLs every
process of the second node (its raylet first); `stop` shuts the cluster down."""

from __future__ import annotations

import json
import os
import sys

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

from ray.cluster_utils import Cluster  # after the variable above: Ray reads it on import


def main() -> None:
    node_args = {"num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": False}
    cluster = Cluster(initialize_head=True, head_node_args=node_args)
    second = cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
    cluster.wait_for_nodes()
    head = cluster.head_node
    print(
        json.dumps(
            {
                "address": cluster.address,
                "head": head.node_id,
                "second": second.node_id,
                "second_raylet": second.all_processes["raylet"][0].process.pid,
            }
        ),
        flush=True,
    )
    for line in sys.stdin:
        if line.strip() == "kill":
            cluster.remove_node(second, allow_graceful=False)  # SIGKILL, raylet first
            print("killed", flush=True)
        elif line.strip() == "stop":
            break
    cluster.shutdown()


if __name__ == "__main__":
    main()
