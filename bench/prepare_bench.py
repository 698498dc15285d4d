"""Benchmark `shapetune prepare`: wall time of a clean build, of a cached re-run, cache
size, and whether two clean builds give identical weights.

    .venv/bin/python bench/prepare_bench.py --size default --out bench/results/prepare-default.json

Runs the real CLI in subprocesses (imports included, as a user sees it), each in a fresh
temporary SHAPETUNE_HOME.
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

CLI = [sys.executable, "-m", "service.cli"]


def run_prepare(home: Path, size: str) -> tuple[float, dict]:
    started = time.perf_counter()
    out = subprocess.run(
        [*CLI, "prepare", "--size", size, "--home", str(home), "--json", "--quiet"],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )
    return time.perf_counter() - started, json.loads(out.stdout)


def weight_hashes(root: Path) -> dict[str, dict[str, str]]:
    return {
        stage: json.loads((root / stage / "_stage.json").read_text())["files"]
        for stage in ("tokenizer", "policy", "reward_model")
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", default="default")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--skip-second-build", action="store_true", help="no determinism check")
    parser.add_argument(
        "--workdir", type=Path, help="build here and keep it (default: a temporary folder)"
    )
    args = parser.parse_args()
    if args.workdir and args.workdir.exists() and any(args.workdir.iterdir()):
        parser.error(f"--workdir {args.workdir} is not empty: a clean build needs an empty one")
    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.workdir or scratch
        a, b = Path(tmp) / "a", Path(tmp) / "b"
        first_s, first = run_prepare(a, args.size)
        again_s, again = run_prepare(a, args.size)
        result = {
            "size": args.size,
            "machine": machine(),
            "clean_build_wall_s": round(first_s, 1),
            "stage_build_s": {k: v["build_seconds"] for k, v in first["stages"].items()},
            "cached_rerun_wall_s": round(again_s, 2),
            "cached_rerun_built_nothing": not any(s["built"] for s in again["stages"].values()),
            "cache_mib": round(first["cache_bytes"] / 2**20, 1),
            "report": first["report"],
        }
        if not args.skip_second_build:
            second_s, _ = run_prepare(b, args.size)
            result["second_clean_build_wall_s"] = round(second_s, 1)
            ra, rb = Path(first["root"]), Path(first["root"].replace(str(a), str(b)))
            result["identical_weights"] = weight_hashes(ra) == weight_hashes(rb)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
