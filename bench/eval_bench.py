"""What common evaluation removes: the same training runs evaluated twice, with common
sampling noise and with noise of each run's own seed (as before common evaluation).

    .venv/bin/python bench/eval_bench.py --seeds 6 --prompts 32,256 --out bench/results/eval.json

Needs the built-in task prepared (`shapetune prepare`). The demo's inner run (12 PPO steps of
16 prompts, critic from the RM, evaluation every 4 steps) for sparse and RED on the same
seeds, two runs at a time with one torch thread each. At every evaluation point each policy
is evaluated on the first N held-out prompts for every N in --prompts, once with the
sampling seeds every run shares (`trainers.ppo.evaluate`) and once with seeds of the run's
own (the evaluation noise a comparison of two runs used to carry). Training is the same
either way: the evaluations fork the RNG.

Reported per prompt count and kind: the spread across seeds of the initial policy's score
(step 0; goal 0), and the s.d. of the per-seed AUC difference RED - sparse with its 95 %
t interval, and the seconds an evaluation took.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ARMS = {"sparse": {"sparse": 1.0}, "red": {"red": 1.0}}
OWN_SEED = 100_003
"""Each run's own evaluation seeds: EVAL_SEED plus this times the run's seed."""


def one_run(arm: str, seed: int, prompts: list[int], home: str) -> dict[str, Any]:
    import torch

    from trainers import ppo
    from trainers.config import TrainConfig
    from trainers.signals import area_under_curve
    from trainers.tasks import make_task

    torch.set_num_threads(1)
    largest = max(prompts)
    config = TrainConfig.from_dict(
        {
            "task": {"name": "imdb-sentiment"},
            "shaping": {"weights": ARMS[arm]},
            "ppo": {
                "rollout_batch": 16,
                "minibatch": 8,
                "epochs": 2,
                "critic_init": "reward_model",
            },
            "steps": 12,
            "eval_interval": 4,
            "eval_prompts": largest,
            "seed": seed,
            "torch_threads": 1,
        }
    )
    common = ppo.EVAL_SEED
    curves: dict[str, dict[int, dict[int, float]]] = {}
    seconds: dict[str, float] = {}
    evaluate = ppo.evaluate

    def both(run: Any, step: int) -> Any:
        point = None
        for kind, base in (("own", common + OWN_SEED * seed), ("common", common)):
            ppo.EVAL_SEED = base
            for n in prompts:
                full = run.eval_prompts
                run.eval_prompts = full[:n]
                started = time.perf_counter()
                found = evaluate(run, step)
                seconds[f"{kind}/{n}"] = seconds.get(f"{kind}/{n}", 0.0) + (
                    time.perf_counter() - started
                )
                run.eval_prompts = full
                curves.setdefault(f"{kind}/{n}", {})[step] = found.metrics["eval/rm_mean"]
                if kind == "common" and n == largest:
                    point = found
        ppo.EVAL_SEED = common
        return point

    ppo.evaluate = both
    started = time.perf_counter()
    ppo.train(config, make_task("imdb-sentiment", Path(home)))
    key = "eval/rm_mean"
    return {
        "arm": arm,
        "seed": seed,
        "seconds": time.perf_counter() - started,
        "eval_seconds": seconds,
        "start": {k: c[0] for k, c in curves.items()},
        "auc": {
            k: area_under_curve({s: {key: v} for s, v in c.items()}, key) for k, c in curves.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--prompts", default="32,256")
    parser.add_argument("--home", default=os.environ.get("SHAPETUNE_HOME", "~/.shapetune"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/eval.json"))
    args = parser.parse_args()
    prompts = [int(n) for n in args.prompts.split(",")]
    home = str(Path(args.home).expanduser())
    jobs = [(arm, seed) for seed in range(args.seeds) for arm in ARMS]
    started = time.perf_counter()
    with ProcessPoolExecutor(2) as pool:
        futures = [pool.submit(one_run, arm, seed, prompts, home) for arm, seed in jobs]
        runs = [f.result() for f in futures]
    from service.tuning.verdict import estimate

    report: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}",
        "seconds": time.perf_counter() - started,
        "by_evaluation": {},
    }
    for kind in (f"{k}/{n}" for n in prompts for k in ("own", "common")):
        sparse = {r["seed"]: r for r in runs if r["arm"] == "sparse"}
        red = {r["seed"]: r for r in runs if r["arm"] == "red"}
        diffs = [red[s]["auc"][kind] - sparse[s]["auc"][kind] for s in sorted(sparse)]
        d = estimate(diffs)
        report["by_evaluation"][kind] = {
            "step0_sd_across_seeds": statistics.stdev(r["start"][kind] for r in sparse.values()),
            "paired_auc_sd": statistics.stdev(diffs),
            "paired_auc_mean": d.mean,
            "paired_auc_95ci": [d.low, d.high],
            "eval_seconds_per_run": statistics.fmean(r["eval_seconds"][kind] for r in runs),
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"report": report, "runs": runs}, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
