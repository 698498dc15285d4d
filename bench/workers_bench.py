"""Study wall time on imdb-sentiment with 1 vs 2 Ray workers (one torch thread each).

    .venv/bin/python bench/workers_bench.py --out bench/results/workers.json

Runs the study of `examples/demo.yaml` (5 trials x 2 seeds of 16 PPO steps) twice through
`run_study` on one local Ray cluster, once with `resources.workers: 1` and once with 2,
each in a fresh SQLite store and run folder (nothing is resumed). The goal of issue 5: the
2-worker study takes <= 0.6x the 1-worker wall time.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import yaml
from common import machine

from service.executor import make_executor
from service.settings import get_settings
from service.tuning.spec.model import parse_spec
from service.tuning.study.loop import run_study

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--spec", type=Path, default=ROOT / "examples" / "demo.yaml")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    base = yaml.safe_load(args.spec.read_text())
    home = get_settings().resolved_home()  # where `shapetune prepare` put the task
    seconds = {}
    for workers in (1, 2):
        name = f"bench-workers-{workers}-{int(time.time())}"
        spec = parse_spec(
            {**base, "name": name, "resources": {**base["resources"], "workers": workers}}
        )
        executor = make_executor("ray", cpus=1, workers=workers)
        assert executor.slots == workers, f"the cluster fits {executor.slots} runs, not {workers}"
        with tempfile.TemporaryDirectory() as store:
            started = time.perf_counter()
            final = run_study(spec, f"sqlite:///{store}/studies.db", home, executor)
            seconds[workers] = time.perf_counter() - started
        shutil.rmtree(home / "studies" / name, ignore_errors=True)
        assert final.done == spec.budget, final
        print(f"{workers} worker(s): {seconds[workers]:.1f} s", flush=True)
    result = {
        "machine": machine(),
        "spec": str(args.spec.relative_to(ROOT)),
        "wall_seconds": {str(k): round(v, 1) for k, v in seconds.items()},
        "ratio_2_to_1": round(seconds[2] / seconds[1], 3),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
