"""Where a study spends its compute, on the synthetic task (issue 12), median over study
seeds:

1. hyperband vs none: total inner PPO steps (every seed of every trial, pruned ones
   included) until the study first completes a trial at least as good as the un-pruned
   study's best minus that best's standard error (goal: <= 0.4x);
2. trials until a study reaches random search's best after `--trials` trials: qnei with
   known noise vs qnei with learned noise vs gp;
3. gp with 4 parallel workers vs 1: the same count (goal: <= 25 % more). Four workers are
   simulated exactly as the coordinator sees them: the inner runs of 4 trials are run
   inline and told together, so each ask sees the trials still running.

    .venv/bin/python bench/outer_bench.py --out bench/results/outer.json

Every study goes through `run_study` (its own SQLite file), inline, one torch thread.
Two studies run at a time. `--quick` is a smoke run (2 seeds, small budgets).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from common import machine

METHODS = ["sparse", "uniform", "red"]
PRUNING_INNER = {
    "steps": 9,
    "eval_interval": 1,
    "eval_prompts": 8,
    "ppo": {"rollout_batch": 8, "minibatch": 4, "epochs": 2, "lr": 0.03},
}
"""Rungs at steps 1 and 3 (Hyperband, reduction factor 3), the run's end at 9."""
SAMPLER_INNER = {
    "steps": 6,
    "eval_interval": 2,
    "eval_prompts": 8,
    "ppo": {"rollout_batch": 8, "minibatch": 4, "epochs": 2, "lr": 0.03},
}


def study(fields: dict[str, Any], workers: int = 1) -> dict[str, Any]:
    """Run one study; per completed trial (in the order they finished) its value and
    standard error, and the PPO steps spent up to and including it."""
    import torch

    from service.executor import InlineExecutor
    from service.tuning.spec.model import parse_spec
    from service.tuning.study.loop import run_study

    torch.set_num_threads(1)
    spec = parse_spec(
        {"task": {"name": "synthetic"}, "methods": METHODS, "executor": "inline", **fields}
    )
    with tempfile.TemporaryDirectory() as home:
        url = f"sqlite:///{home}/studies.db"
        executor = InlineExecutor() if workers == 1 else BatchedInline(workers, spec.seeds)
        started = time.perf_counter()
        run_study(spec, url, Path(home), executor)
        seconds = time.perf_counter() - started
        return {"seconds": seconds, "trials": _trials(url, spec.name)}


def _trials(url: str, name: str) -> list[dict[str, Any]]:
    import optuna
    from optuna.trial import TrialState

    from service.tuning.contracts import TrialRecord

    found = optuna.load_study(study_name=name, storage=url).get_trials()
    found.sort(key=lambda t: (t.datetime_complete or t.datetime_start, t.number))
    rows, spent = [], 0
    for t in found:
        record = TrialRecord.from_trial(t)
        spent += sum(record.steps)
        if t.state == TrialState.COMPLETE:
            rows.append({"value": t.value, "stderr": record.stderr, "steps_spent": spent})
        elif t.state == TrialState.PRUNED:
            rows.append({"value": None, "stderr": None, "steps_spent": spent})
    return rows


class BatchedInline:
    """`workers` trials at a time, as a pool of workers looks to the coordinator: jobs wait
    until `workers` trials' runs are queued (or no more come), then all run inline and are
    told together."""

    def __init__(self, workers: int, seeds: int) -> None:
        self.slots = workers * seeds
        self.pending: list[Any] = []
        self.fresh = False

    def submit(self, fn: Any, job: Any) -> None:
        self.pending.append((fn, job))
        self.fresh = True

    def wait(self, timeout_s: float) -> list[Any]:
        from service.executor.base import Outcome

        full = len(self.pending) >= self.slots or not self.fresh
        self.fresh = False
        if not (full and self.pending):
            return []
        done, self.pending = self.pending, []
        return [Outcome(job, result=fn(job)) for fn, job in done]

    def running(self) -> int:
        return len(self.pending)

    def shutdown(self) -> None:
        self.pending.clear()


def pruning_pair(seed: int, budget: int) -> dict[str, Any]:
    base = {"inner": PRUNING_INNER, "seeds": 2, "budget": budget, "sampler": "tpe", "seed": seed}
    none = study({**base, "name": f"none-{seed}", "pruner": "none"})
    band = study({**base, "name": f"hyperband-{seed}", "pruner": "hyperband"})
    complete = [r for r in none["trials"] if r["value"] is not None]
    best = max(complete, key=lambda r: r["value"])
    target = best["value"] - (best["stderr"] or 0.0)
    reached = next(
        (r for r in band["trials"] if r["value"] is not None and r["value"] >= target), None
    )
    return {
        "seed": seed,
        "none_best": best["value"],
        "none_best_stderr": best["stderr"],
        "none_steps_to_best": best["steps_spent"],
        "none_steps_total": none["trials"][-1]["steps_spent"],
        "hyperband_best": max(r["value"] for r in band["trials"] if r["value"] is not None),
        "hyperband_steps_to_target": None if reached is None else reached["steps_spent"],
        "hyperband_steps_total": band["trials"][-1]["steps_spent"],
        "hyperband_pruned": sum(r["value"] is None for r in band["trials"]),
        "seconds": none["seconds"] + band["seconds"],
    }


ARMS = {
    "random": {"sampler": "random"},
    "gp": {"sampler": "gp"},
    "qnei-known": {"sampler": "qnei", "noise": "known"},
    "qnei-learned": {"sampler": "qnei", "noise": "learned"},
}


def sampler_run(arm: str, seed: int, trials: int, workers: int) -> dict[str, Any]:
    fields = {
        "name": f"{arm}-{workers}w-{seed}",
        "inner": SAMPLER_INNER,
        "seeds": 2,
        "budget": trials,
        "startup_trials": 8,
        "seed": seed,
        **ARMS[arm],
    }
    ran = study(fields, workers)
    values = [r["value"] for r in ran["trials"] if r["value"] is not None]
    return {
        "arm": arm,
        "seed": seed,
        "workers": workers,
        "values": values,
        "seconds": ran["seconds"],
    }


def trials_to_reach(values: list[float], target: float) -> int | None:
    """1-based count of trials until the best so far is >= target (None: never)."""
    return next((i + 1 for i, v in enumerate(values) if v >= target), None)


def median_or_none(xs: list[float | None]) -> float | None:
    """Median, counting a study that never got there as worse than any that did (None if
    more than half never did)."""
    ranked = sorted(xs, key=lambda x: float("inf") if x is None else x)
    middle = ranked[(len(ranked) - 1) // 2 : len(ranked) // 2 + 1]
    if any(x is None for x in middle):
        return None
    return statistics.fmean(x for x in middle if x is not None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--budget", type=int, default=12, help="completed trials, part 1")
    parser.add_argument("--trials", type=int, default=32, help="trials per study, parts 2-3")
    parser.add_argument("--parts", default="1,2,3")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("bench/results/outer.json"))
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.budget, args.trials = 2, 6, 10
    parts = {int(p) for p in args.parts.split(",")}
    started = time.perf_counter()
    result: dict[str, Any] = {
        "machine": machine(),
        "command": " ".join([".venv/bin/python", *sys.argv]),
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    with ProcessPoolExecutor(2) as pool:
        if 1 in parts:
            pairs = list(pool.map(pruning_pair, range(args.seeds), [args.budget] * args.seeds))
            result["pruning"] = _pruning_summary(pairs)
        if parts & {2, 3}:
            arms = ["random", "gp"] + (["qnei-known", "qnei-learned"] if 2 in parts else [])
            jobs = [(a, s, 1) for a in arms for s in range(args.seeds)]
            if 3 in parts:
                jobs += [("gp", s, 4) for s in range(args.seeds)]
            futures = [pool.submit(sampler_run, a, s, args.trials, w) for a, s, w in jobs]
            result["samplers"] = _sampler_summary([f.result() for f in futures])
    result["seconds"] = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(_markdown(result))
    print(_markdown(result))


def _pruning_summary(pairs: list[dict[str, Any]]) -> dict[str, Any]:
    ratios = [
        None
        if p["hyperband_steps_to_target"] is None
        else p["hyperband_steps_to_target"] / p["none_steps_to_best"]
        for p in pairs
    ]
    return {
        "per_seed": pairs,
        "median_ratio_steps_to_reach": median_or_none(ratios),
        "reached": sum(r is not None for r in ratios),
        "median_ratio_total_steps": statistics.median(
            p["hyperband_steps_total"] / p["none_steps_total"] for p in pairs
        ),
    }


def _sampler_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    seeds = sorted({r["seed"] for r in runs})
    target = {
        s: max(next(r for r in runs if r["arm"] == "random" and r["seed"] == s)["values"])
        for s in seeds
    }
    out: dict[str, Any] = {"random_best_per_seed": target, "arms": {}}
    for arm, workers in sorted({(r["arm"], r["workers"]) for r in runs}):
        counts = [
            trials_to_reach(r["values"], target[r["seed"]])
            for r in runs
            if r["arm"] == arm and r["workers"] == workers
        ]
        out["arms"][f"{arm} x{workers}"] = {
            "trials_to_reach_per_seed": counts,
            "median_trials_to_reach": median_or_none([float(c) if c else None for c in counts]),
        }
    return out


def _markdown(result: dict[str, Any]) -> str:
    lines = ["# Outer loop: compute and trials (synthetic task)", ""]
    lines += [f"`{result['command']}`; {result['machine']}", ""]
    if "pruning" in result:
        p = result["pruning"]
        lines += [
            "## Hyperband vs none (seeds 2 per trial)",
            "",
            "| seed | none best ± s.e. | none steps to best | hyperband steps to reach | ratio | pruned |",
            "|---|---|---|---|---|---|",
        ]
        for s in p["per_seed"]:
            reach = s["hyperband_steps_to_target"]
            ratio = "never" if reach is None else f"{reach / s['none_steps_to_best']:.2f}"
            lines.append(
                f"| {s['seed']} | {s['none_best']:.3f} ± {s['none_best_stderr'] or 0:.3f} | "
                f"{s['none_steps_to_best']} | {reach if reach is not None else '-'} | {ratio} | "
                f"{s['hyperband_pruned']} |"
            )
        median = p["median_ratio_steps_to_reach"]
        lines += [
            "",
            f"Median ratio of steps to reach: {'never' if median is None else f'{median:.2f}'} "
            f"({p['reached']} of {len(p['per_seed'])} seeds reached); median ratio of total "
            f"steps for the same budget: {p['median_ratio_total_steps']:.2f}.",
            "",
        ]
    if "samplers" in result:
        lines += [
            "## Trials to reach random search's best",
            "",
            "| sampler x workers | median trials | per seed |",
            "|---|---|---|",
        ]
        for arm, row in result["samplers"]["arms"].items():
            m = row["median_trials_to_reach"]
            per = ", ".join("-" if c is None else str(c) for c in row["trials_to_reach_per_seed"])
            lines.append(f"| {arm} | {'never' if m is None else f'{m:g}'} | {per} |")
        lines.append("")
    lines.append(f"Wall time {result['seconds']:.0f} s.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
