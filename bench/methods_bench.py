"""Every shaping method side by side on imdb-sentiment: the comparison of issue 4.

    .venv/bin/python bench/methods_bench.py --steps 30 --seeds 2 --out bench/results/methods.json

Each (method, seed) is one `trainers.ppo.train` run at equal PPO steps, two runs at a time
with one torch thread each (so wall times are per run on one core of a 2-core machine).
Reported per method, as means over seeds: the held-out RM curve, steps and training seconds
to reach the sparse run's final reward, area under the curve, reward at the sparse run's
final KL, gold (VADER) score, repetition, seconds per step and the share spent in
attribution. Writes JSON, a markdown table (.md) and a plot (.png) beside `--out`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from common import machine, series

ARMS: dict[str, dict[str, Any]] = {
    "sparse (critic: policy)": {"weights": {"sparse": 1.0}},
    "sparse (critic: RM)": {"weights": {"sparse": 1.0}, "ppo": {"critic_init": "reward_model"}},
    "uniform": {"weights": {"uniform": 1.0}},
    "red": {"weights": {"red": 1.0}},
    "attention": {"weights": {"attention": 1.0}},
    "shapley (tokens)": {"weights": {"shapley": 1.0}},
    "shapley (spans)": {"weights": {"shapley": 1.0}, "options": {"shapley": {"unit": "span"}}},
    # Explainer budgets cut from the library defaults (500): at 500 rows per response a step
    # of 16 responses costs 8,000 RM rows, beyond this benchmark's CPU budget.
    "shap": {"weights": {"shap": 1.0}, "options": {"shap": {"max_evals": 100}}},
    "lime": {"weights": {"lime": 1.0}, "options": {"lime": {"num_samples": 100}}},
    # The fair comparison: every arm's critic starts from the reward model, as the strong
    # sparse baseline's does (--baseline "sparse (critic: RM)").
    "red (critic: RM)": {"weights": {"red": 1.0}, "ppo": {"critic_init": "reward_model"}},
    "shapley tokens (critic: RM)": {
        "weights": {"shapley": 1.0},
        "ppo": {"critic_init": "reward_model"},
    },
    "amortized (critic: RM)": {
        "weights": {"amortized": 1.0},
        "ppo": {"critic_init": "reward_model"},
    },
}
BASELINE = "sparse (critic: policy)"


def one_run(arm: str, seed: int, args: dict[str, Any]) -> dict[str, Any]:
    import torch

    from trainers.config import TrainConfig
    from trainers.explainer import explainers_root
    from trainers.ppo import train
    from trainers.tasks import make_task

    torch.set_num_threads(1)
    spec = args.get("arms", ARMS)[arm]  # another script's arms (bench/headline.py)
    config = TrainConfig.from_dict(
        {
            "task": {"name": "imdb-sentiment"},
            "shaping": {
                "weights": spec["weights"],
                "options": spec.get("options", {}),
                **args.get("shaping", {}),  # e.g. coalition_dtype, from bench/headline.py
            },
            "ppo": {**args["ppo"], **spec.get("ppo", {})},
            "steps": args["steps"],
            "eval_interval": args["eval_interval"],
            "eval_prompts": args["eval_prompts"],
            "seed": seed,
            "torch_threads": 1,
        }
    )
    task = make_task("imdb-sentiment", Path(args["home"]))
    started = time.perf_counter()
    result = train(config, task, explainers=explainers_root(Path(args["home"])))
    return {
        "arm": arm,
        "seed": seed,
        "wall_seconds": time.perf_counter() - started,
        "curves": result.curves,
        "phase_seconds": dict(result.phase_seconds),
        "costs": dict(result.costs),
        "steps": result.steps,
    }


def _first_reaching(run: dict[str, Any], target: float) -> tuple[float, float]:
    """Steps and training seconds at the first evaluation at or above `target` (nan if never)."""
    for s in sorted(run["curves"]):
        m = run["curves"][s]
        if s > 0 and m["eval/rm_mean"] >= target:
            return float(s), float(m["cost/train_seconds"])
    return float("nan"), float("nan")


def summarize(runs: list[dict[str, Any]], baseline: str) -> dict[str, dict[str, float]]:
    base = [r for r in runs if r["arm"] == baseline]
    target = statistics.fmean(series(r, "eval/rm_mean")[1][-1] for r in base)
    base_kl = statistics.fmean(series(r, "eval/kl")[1][-1] for r in base)
    table = {}
    for arm in dict.fromkeys(r["arm"] for r in runs):
        mine = [r for r in runs if r["arm"] == arm]
        reach = [_first_reaching(r, target) for r in mine]
        steps_train = [
            sum(v for k, v in r["phase_seconds"].items() if k != "evaluate") for r in mine
        ]
        attribution = [r["phase_seconds"].get("shape", 0.0) for r in mine]
        at_kl = []
        for r in mine:
            kl, rm = series(r, "eval/kl")[1], series(r, "eval/rm_mean")[1]
            order = np.argsort(kl)
            at_kl.append(float(np.interp(base_kl, kl[order], rm[order])))
        table[arm] = {
            "final_rm": statistics.fmean(series(r, "eval/rm_mean")[1][-1] for r in mine),
            "auc_rm": statistics.fmean(
                float(np.trapezoid(*series(r, "eval/rm_mean")[::-1]) / max(r["steps"], 1))
                for r in mine
            ),
            "steps_to_sparse_final": _nanmean([s for s, _ in reach]),
            "seconds_to_sparse_final": _nanmean([t for _, t in reach]),
            "reached_in_runs": sum(not np.isnan(s) for s, _ in reach),
            "rm_at_sparse_kl": statistics.fmean(at_kl),
            "final_gold": statistics.fmean(series(r, "eval/gold_mean")[1][-1] for r in mine),
            "final_kl": statistics.fmean(series(r, "eval/kl")[1][-1] for r in mine),
            "final_repetition": statistics.fmean(
                series(r, "eval/repeated_token_fraction")[1][-1] for r in mine
            ),
            "seconds_per_step": statistics.fmean(
                t / r["steps"] for t, r in zip(steps_train, mine, strict=True)
            ),
            "attribution_share": statistics.fmean(
                a / t for a, t in zip(attribution, steps_train, strict=True)
            ),
            "rm_rows_per_response": statistics.fmean(
                r["costs"].get("cost/rm_rows_per_response", 0.0) for r in mine
            ),
        }
    return table


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not np.isnan(v)]
    return statistics.fmean(finite) if finite else float("nan")


def markdown(table: dict[str, dict[str, float]], target: float) -> str:
    head = (
        "| method | final RM | AUC | steps to sparse final | s to sparse final | RM at sparse KL "
        "| gold | KL | repetition | s/step | attribution | RM rows/resp |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = [
        f"| {arm} | {m['final_rm']:.3f} | {m['auc_rm']:.3f} | {m['steps_to_sparse_final']:.1f} "
        f"({m['reached_in_runs']}) | {m['seconds_to_sparse_final']:.0f} | {m['rm_at_sparse_kl']:.3f} "
        f"| {m['final_gold']:.3f} | {m['final_kl']:.2f} | {m['final_repetition']:.3f} "
        f"| {m['seconds_per_step']:.2f} | {100 * m['attribution_share']:.0f} % | {m['rm_rows_per_response']:.1f} |"
        for arm, m in table.items()
    ]
    return f"Target (sparse final held-out RM): {target:.3f}\n\n" + head + "\n".join(rows) + "\n"


def plot(runs: list[dict[str, Any]], path: Path, log_seconds: bool = False) -> None:
    """Held-out RM curves of each arm in `runs` (mean over seeds), against steps and
    training seconds (on a log scale with `log_seconds`: arms that differ by 10x in cost)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
    for arm in dict.fromkeys(r["arm"] for r in runs):
        mine = [r for r in runs if r["arm"] == arm]
        steps = series(mine[0], "eval/rm_mean")[0]
        mean = np.mean([series(r, "eval/rm_mean")[1] for r in mine], axis=0)
        seconds = np.mean([series(r, "cost/train_seconds")[1] for r in mine], axis=0)
        style = "--" if arm.startswith("sparse") else "-"
        ax.plot(steps, mean, style, label=arm)
        bx.plot(seconds, mean, style, label=arm)
    ax.set_xlabel("PPO step")
    bx.set_xlabel("training seconds (one core)")
    if log_seconds:
        bx.set_xscale("log")
    for a in (ax, bx):
        a.set_ylabel("held-out RM reward (mean over seeds)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--eval-interval", type=int, default=5)
    parser.add_argument("--eval-prompts", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--baseline", default=BASELINE, help="The arm whose final is the target.")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--home", default=str(Path("~/.shapetune").expanduser()))
    parser.add_argument("--out", type=Path, required=True)
    a = parser.parse_args()
    settings = {
        "steps": a.steps,
        "eval_interval": a.eval_interval,
        "eval_prompts": a.eval_prompts,
        "home": a.home,
        "ppo": {"rollout_batch": a.batch, "minibatch": a.batch // 2, "epochs": 2},
    }
    jobs = [(arm, seed, settings) for arm in a.arms.split(",") for seed in range(a.seeds)]
    started = time.perf_counter()
    with ProcessPoolExecutor(a.processes) as pool:
        runs = list(pool.map(one_run, *zip(*jobs, strict=True)))
    table = summarize(runs, a.baseline)
    target = table[a.baseline]["final_rm"]
    result = {
        "machine": machine(),
        "command": " ".join(["bench/methods_bench.py", *map(repr, sys.argv[1:])]),
        "settings": settings,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "table": table,
        "runs": runs,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1, default=float) + "\n")
    a.out.with_suffix(".md").write_text(markdown(table, target))
    plot(runs, a.out.with_suffix(".png"))
    print(markdown(table, target))


if __name__ == "__main__":
    main()
