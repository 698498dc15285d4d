"""Outer samplers on the synthetic task: best-so-far vs trials, median over study seeds.

    .venv/bin/python bench/sampler_bench.py --out bench/results/samplers.json

Each (sampler, study seed) is a full study through `run_study` (inline executor, its own
SQLite file, one inner run per trial), so the figures include everything a user's study
does. Two studies run at a time, one torch thread each. The goal of issue 5: `gp` reaches
random's 32-trial best (median over seeds) in <= 16 trials.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from common import machine

INNER = {
    "steps": 20,
    "eval_interval": 5,
    "eval_prompts": 16,
    "ppo": {"rollout_batch": 16, "minibatch": 8, "epochs": 2, "lr": 3e-3, "kl_coef": 0.01},
}
METHODS = ["sparse", "uniform", "red", "shapley"]


def one_study(sampler: str, seed: int, trials: int) -> dict[str, Any]:
    import torch

    from service.executor import InlineExecutor
    from service.read import model as read
    from service.tuning.spec.model import parse_spec
    from service.tuning.study.loop import run_study

    torch.set_num_threads(1)
    spec = parse_spec(
        {
            "name": f"{sampler}-{seed}",
            "task": {"name": "synthetic"},
            "methods": METHODS,
            "budget": trials,
            "seeds": 1,
            "sampler": sampler,
            "seed": seed,
            "startup_trials": 8,
            "control_arms": False,  # a sampler comparison: every point is the sampler's own
            "executor": "inline",
            "inner": INNER,
        }
    )
    with tempfile.TemporaryDirectory() as home:
        url = f"sqlite:///{home}/studies.db"
        started = time.perf_counter()
        run_study(spec, url, Path(home), InlineExecutor())
        seconds = time.perf_counter() - started
        rows = [t for t in read.trials(url, spec.name).data if t.state == "COMPLETE"]
    values = [t.value for t in sorted(rows, key=lambda t: t.number)]
    best = [max(values[: i + 1]) for i in range(len(values))]
    return {
        "sampler": sampler,
        "seed": seed,
        "values": values,
        "best_so_far": best,
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samplers", default="gp,tpe,qnei,random")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--trials", type=int, default=32)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    samplers = args.samplers.split(",")
    jobs = [(s, k, args.trials) for s in samplers for k in range(args.seeds)]
    started = time.perf_counter()
    with ProcessPoolExecutor(args.processes) as pool:
        runs = list(pool.map(one_study, *zip(*jobs, strict=True)))
    median = {
        s: [
            statistics.median(r["best_so_far"][i] for r in runs if r["sampler"] == s)
            for i in range(args.trials)
        ]
        for s in samplers
    }
    target = median["random"][-1] if "random" in median else None
    reach = {
        s: next((i + 1 for i, v in enumerate(curve) if target is not None and v >= target), None)
        for s, curve in median.items()
    }
    result = {
        "machine": machine(),
        "inner": INNER,
        "methods": METHODS,
        "trials": args.trials,
        "study_seeds": args.seeds,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "median_best_so_far": median,
        "random_final_median_best": target,
        "trials_to_reach_random_final": reach,
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    _plot(median, args.out.with_suffix(".png"), target)
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1))


def _plot(median: dict[str, list[float]], path: Path, target: float | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for sampler, curve in median.items():
        ax.plot(range(1, len(curve) + 1), curve, label=sampler)
    if target is not None:
        ax.axhline(target, color="grey", linestyle=":", label="random's final best")
    ax.set_xlabel("trials")
    ax.set_ylabel("best objective so far (median over study seeds)")
    ax.set_title("synthetic task: outer samplers")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
