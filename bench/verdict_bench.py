"""Does the race's verdict mean what it says? A/A races and a known effect, on real PPO runs.

    .venv/bin/python bench/verdict_bench.py --pool 32 --races 200 --out bench/results/verdict.json

On the synthetic task (exact token Shapley in closed form; 40 PPO steps of 16 prompts,
lr 3e-3, 64 evaluation prompts, the AUC objective), it trains a pool of real runs, two at a
time with one torch thread each:

* sparse on seeds 0 .. pool-1, a second sparse arm on seeds pool .. 2 pool-1 (the same arm
  under another label: the null is true), and exact Shapley on seeds 0 .. pool-1;
* then it runs `service.tuning.study.reevaluate` itself, race after race, on an executor that
  answers each run from the pool: race r takes its seeds in the order of a permutation of
  the pool drawn from r, so every race is paired by seed (A/A pairs run k of one sparse arm
  with run k of the other).

Reported: the share of A/A races whose verdict says "beats" or "loses" (false verdicts), with
its 95 % Wilson interval (goal at most 5 %); the share of known-effect races that say "beats",
and the seeds they used. Races share the pool, so they are not independent: the intervals
are for the races as drawn from these runs.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from common import machine

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

INNER = {
    "task": {"name": "synthetic"},
    "ppo": {"rollout_batch": 16, "minibatch": 8, "epochs": 2, "lr": 3e-3},
    "steps": 40,
    "eval_interval": 10,
    "eval_prompts": 64,
    "torch_threads": 1,
    "device": "cpu",
}
ARMS = {"sparse": {"sparse": 1.0}, "shapley": {"shapley": 1.0}}


def one_run(arm: str, seed: int) -> dict[str, Any]:
    import torch

    from service.tuning.search.objective import objective_value
    from trainers.config import TrainConfig
    from trainers.ppo import train
    from trainers.tasks import make_task

    torch.set_num_threads(1)
    config = TrainConfig.from_dict({**INNER, "shaping": {"weights": ARMS[arm]}, "seed": seed})
    started = time.perf_counter()
    result = train(config, make_task("synthetic", Path(tempfile.gettempdir())))
    curve = result.curves
    return {
        "arm": arm,
        "seed": seed,
        "value": objective_value("auc", curve, result.steps, None),
        "start": curve[0]["eval/rm_mean"],
        "seconds": time.perf_counter() - started,
    }


def train_pool(pool: int) -> list[dict[str, Any]]:
    plan = [("sparse", s) for s in range(2 * pool)] + [("shapley", s) for s in range(pool)]
    with ProcessPoolExecutor(max_workers=2) as workers:
        return list(workers.map(one_run, *zip(*plan, strict=True)))


def races(runs: list[dict[str, Any]], pool: int, count: int, effect: bool) -> list[dict[str, Any]]:
    """`count` races of the service's own `reevaluate` over the pool's values."""
    import optuna

    from service.executor import InlineExecutor
    from service.executor.base import Job, JobFn
    from service.tuning.contracts import InnerResult, TrialRecord
    from service.tuning.search.objective import CURVE_KEY
    from service.tuning.spec.model import parse_spec
    from service.tuning.study.reevaluate import RaceSize, fresh_seed, reevaluate

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    by = {(r["arm"], r["seed"]): r for r in runs}
    # Trial 0: the sparse baseline, seeds 0..pool-1. Trial 1: the challenger: sparse again
    # on seeds pool.. (A/A), or Shapley on the baseline's own seeds (the known effect).
    challenger = ("shapley", 0) if effect else ("sparse", pool)

    class FromPool(InlineExecutor):
        """Answers each run from the pool, in this race's order of its seeds."""

        def __init__(self, order: np.ndarray) -> None:
            super().__init__()
            self.order = order

        def submit(self, fn: JobFn, job: Job) -> None:
            super().submit(self._answer, job)

        def _answer(self, job: Job) -> InnerResult:
            k = int(self.order[job.config.seed - fresh_seed(spec.seed, 0)])
            arm, offset = ("sparse", 0) if job.trial_number == 0 else challenger
            run = by[(arm, offset + k)]
            curve = {0: {CURVE_KEY: run["start"]}}
            return InnerResult(job.seed_index, "pool", value=run["value"], curve=curve)

    home = Path(tempfile.mkdtemp())
    url = f"sqlite:///{home / 'races.db'}"
    spec = parse_spec(
        {
            "name": "race",
            "task": {"name": "synthetic"},
            "methods": ["sparse", "shapley"],
            "inner": {k: v for k, v in INNER.items() if k != "task"},
            "budget": 2,
            "executor": "inline",
        }
    )
    study = optuna.create_study(study_name="race", storage=url, direction="maximize")
    for number, weights in enumerate(
        ({"sparse": 1.0, "shapley": 0.0}, {"sparse": 0.0, "shapley": 1.0})
    ):
        study.add_trial(
            optuna.trial.create_trial(
                value=0.0,
                params={"k": float(number)},
                distributions={"k": optuna.distributions.FloatDistribution(0, 1)},
                user_attrs=TrialRecord(
                    label="pure sparse" if number == 0 else "", weights=weights
                ).to_user_attrs(),
            )
        )
    size = RaceSize(arms=1, min_seeds=3, round_seeds=2, max_seeds=min(pool, 11))
    out = []
    for r in range(count):
        executor = FromPool(np.random.default_rng([r, int(effect)]).permutation(pool))
        found = reevaluate(spec, url, home, executor, size)
        out.append(
            {
                "outcome": found["outcome"],
                "seeds": len(found["seeds"]),
                "difference": found["difference"]["mean"],
                "margin": found["margin"],
            }
        )
    return out


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", type=int, default=32, help="seeds per arm in the pool")
    parser.add_argument("--races", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path("bench/results/verdict.json"))
    args = parser.parse_args()
    started = time.perf_counter()
    runs = train_pool(args.pool)
    trained = time.perf_counter() - started
    report: dict[str, Any] = {
        "machine": machine(),
        "inner": INNER,
        "pool": args.pool,
        "train_seconds": trained,
        "run_seconds": statistics.fmean(r["seconds"] for r in runs),
    }
    base = [r["value"] for r in runs if r["arm"] == "sparse" and r["seed"] < args.pool]
    shap = [r["value"] for r in runs if r["arm"] == "shapley"]
    diff = [a - b for a, b in zip(shap, base, strict=True)]
    report["known_effect_all_seeds"] = {
        "mean": statistics.fmean(diff),
        "sd": statistics.stdev(diff),
        "n": len(diff),
    }
    for name, effect in (("a_a", False), ("known_effect", True)):
        found = races(runs, args.pool, args.races, effect)
        said = Counter(r["outcome"] for r in found)
        hits = said["beats"] + said["loses"] if not effect else said["beats"]
        report[name] = {
            "races": len(found),
            "outcomes": dict(said),
            "share": hits / len(found),
            "share_95ci": wilson(hits, len(found)),
            "mean_seeds": statistics.fmean(r["seeds"] for r in found),
            "mean_margin": statistics.fmean(r["margin"] for r in found),
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"report": report, "runs": runs}, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
