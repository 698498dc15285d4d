"""How accurate must credits be for PPO to gain from them? Token Shapley credits with noise
of known size added, against the same credits without it and against pure sparse, paired by
seed; and amortized credit, whose error is the network's own, beside them.

    # the synthetic task: exact Shapley values in closed form
    .venv/bin/python bench/credit_noise_bench.py --task synthetic --seeds 16 --steps 40 \\
        --lr 3e-3 --eval-prompts 64 --noise 0,0.07,0.15,0.3,0.45,0.7,1.0
    # the built-in task at 64-token responses, where token Shapley starts to pay
    .venv/bin/python bench/credit_noise_bench.py --task imdb-sentiment --seeds 5 --steps 12 \\
        --length 64 --eval-prompts 128 --noise 0,0.15,0.3,0.45,0.7 --amortized

Arm "noise r": weights {shapley: 1} (synthetic: exact, all coalitions; imdb-sentiment: the
method's defaults, leverage with 8 permutations, 6.8 % error at 24 tokens), each response's
credits plus mean-zero Gaussian noise scaled to r times their L2 norm with the sum kept (so
the return is conserved), drawn from a generator of the run's own. Every arm's critic
starts where the fair sparse baseline's does (the RM on imdb-sentiment, the policy on the
synthetic task, whose RM is no transformer). Outcome: held-out RM reward averaged over
training (AUC) and at the end; each arm minus "noise 0" per seed, with a 95 % t interval,
and the verdict at a study's default margin: a fifth of what sparse gains over the initial
policy.

Each run is kept as JSON under `$SHAPETUNE_HOME/bench/credit-noise/<task>-<settings>/` as it
ends: a stopped sitting resumes. Two runs at a time, one torch thread each. Writes JSON and a
markdown table beside `--out`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from common import machine

REFERENCE = "noise 0"


def noisy(credits: Any, mask: Any, r: float, generator: Any) -> Any:
    """`credits` (B, T) plus noise of relative L2 size `r` per row, summing to zero."""
    import torch

    z = torch.randn(credits.shape, generator=generator) * mask
    z = z - mask * z.sum(1, keepdim=True) / mask.sum(1, keepdim=True).clamp_min(1)
    scale = credits.norm(dim=1, keepdim=True) / z.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return credits + r * scale * z


def run_config(method: str, seed: int, args: dict[str, Any]) -> Any:
    from trainers.config import TrainConfig

    synthetic = args["task"] == "synthetic"
    options = {"shapley": {"max_exact_players": 16}} if synthetic else {}
    task_options = {"response_length": args["length"]} if synthetic else {}
    return TrainConfig.from_dict(
        {
            "task": {"name": args["task"], "options": task_options},
            "shaping": {"weights": {method: 1.0}, "options": options},
            "ppo": {
                "rollout_batch": args["batch"],
                "minibatch": args["batch"] // 2,
                "epochs": 2,
                "lr": args["lr"],
                "response_length": args["length"],
                "critic_init": "policy" if synthetic else "reward_model",
            },
            "steps": args["steps"],
            "eval_interval": args["eval_interval"],
            "eval_prompts": args["eval_prompts"],
            "seed": seed,
            "device": "cpu",
            "torch_threads": 1,
        }
    )


def initial_reward(args: dict[str, Any]) -> float:
    """The held-out reward of the initial policy: every run's step 0 (the evaluation's
    noise is common to all runs)."""
    from trainers.ppo import build_run, evaluate
    from trainers.tasks import make_task

    config = run_config("sparse", 0, args)
    task = make_task(args["task"], Path(args["home"]), **config.task.options)
    return evaluate(build_run(config, task), 0).metrics["eval/rm_mean"]


def one_run(arm: str, seed: int, args: dict[str, Any]) -> dict[str, Any]:
    """One PPO run of `arm`; its outcome and cost."""
    import torch

    from shaping.attribution.shapley import ShapleyAttributor
    from trainers.explainer import explainers_root
    from trainers.ppo import train
    from trainers.signals import area_under_curve
    from trainers.tasks import make_task

    torch.set_num_threads(1)
    method = arm if arm in ("sparse", "amortized") else "shapley"
    config = run_config(method, seed, args)
    home = Path(args["home"])
    task = make_task(args["task"], home, **config.task.options)
    # The noise goes into this run's Shapley credits only: a pool's process runs many arms
    # one after another, and an amortized run's audits ask Shapley too.
    original = ShapleyAttributor._credits
    if method == "shapley" and (r := float(arm.split()[1])):
        generator = torch.Generator().manual_seed(10_000 + seed)

        def with_noise(self: ShapleyAttributor, batch: Any) -> Any:
            credits = original(self, batch)
            return noisy(credits, batch.response_mask.float(), r, generator)

        ShapleyAttributor._credits = with_noise  # type: ignore[method-assign]
    try:
        result = train(config, task, explainers=explainers_root(home))
    finally:
        ShapleyAttributor._credits = original  # type: ignore[method-assign]
    curves = result.curves
    return {
        "arm": arm,
        "seed": seed,
        "auc": area_under_curve(curves, "eval/rm_mean"),
        "final": curves[max(curves)]["eval/rm_mean"],
        "train_seconds": sum(result.phase_seconds.values()),
        "rm_rows_per_response": result.costs.get("cost/rm_rows_per_response"),
        "audit_error": result.final.get("shaping/amortized_audit_error"),
    }


def summarize(
    runs: list[dict[str, Any]], arms: list[str], seeds: int, initial: float
) -> dict[str, Any]:
    """Each arm minus noise 0, paired by seed, and its verdict at the tool's margin: a fifth
    of what sparse gains over the initial policy (a study's default `margin`)."""
    from service.tuning.study.verdict import decide, equivalence_margin, estimate

    by = {(r["arm"], r["seed"]): r for r in runs}
    out: dict[str, Any] = {}
    for key in ("auc", "final"):
        margin = equivalence_margin(0.2, [by[("sparse", s)][key] - initial for s in range(seeds)])
        table = {}
        for arm in arms:
            if arm == REFERENCE:
                continue
            d = estimate([by[(arm, s)][key] - by[(REFERENCE, s)][key] for s in range(seeds)])
            table[arm] = {**d.model_dump(), "verdict": decide(d, margin, "maximize").outcome}
        out[key] = {"margin": margin, "versus_reference": table}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", choices=("synthetic", "imdb-sentiment"), default="synthetic")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--length", type=int, default=8)
    parser.add_argument("--eval-prompts", type=int, default=64)
    parser.add_argument("--eval-interval", type=int, default=4)
    parser.add_argument("--noise", default="0,0.15,0.3,0.45,0.7")
    parser.add_argument("--amortized", action="store_true", help="Add the amortized arm.")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--home", default=os.environ.get("SHAPETUNE_HOME", "~/.shapetune"))
    parser.add_argument("--out", type=Path, default=None)
    a = parser.parse_args()
    args = {k: v for k, v in vars(a).items() if k not in ("out", "processes")}
    args["home"] = str(Path(a.home).expanduser())
    arms = ["sparse", *(f"noise {r}" for r in a.noise.split(","))]
    arms += ["amortized"] if a.amortized else []
    if REFERENCE not in arms:
        parser.error("--noise must include 0: the arms are compared with it")
    # Seeds and arms are left out (each run is kept by its arm and seed): a later sitting
    # with more seeds, noise levels or amortized reuses the runs of this one.
    kept = {k: v for k, v in args.items() if k not in ("home", "seeds", "noise", "amortized")}
    settings = json.dumps(kept, sort_keys=True)
    keep = Path(args["home"]) / "bench" / "credit-noise"
    keep /= f"{a.task}-{hashlib.sha256(settings.encode()).hexdigest()[:12]}"
    keep.mkdir(parents=True, exist_ok=True)
    todo = [(arm, s) for s in range(a.seeds) for arm in arms]
    runs = [
        r
        for p in keep.glob("*.json")
        if (r := json.loads(p.read_text()))["seed"] < a.seeds and r["arm"] in arms
    ]
    done = {(r["arm"], r["seed"]) for r in runs}
    if a.amortized:  # built once here, before two runs race to build it
        from trainers.explainer import ensure_explainer, explainers_root
        from trainers.tasks import make_task

        task = make_task(a.task, Path(args["home"]))
        ensure_explainer(task, a.length, explainers_root(Path(args["home"])))
    with ProcessPoolExecutor(a.processes) as pool:
        futures = [pool.submit(one_run, arm, s, args) for arm, s in todo if (arm, s) not in done]
        for future in futures:
            run = future.result()
            (keep / f"{run['arm'].replace(' ', '_')}-{run['seed']}.json").write_text(
                json.dumps(run)
            )
            runs.append(run)
            print(json.dumps(run), flush=True)
    result = {
        "machine": machine(),
        "args": args,
        "runs": sorted(runs, key=lambda r: (arms.index(r["arm"]), r["seed"])),
        "initial": (initial := initial_reward(args)),
        "summary": summarize(runs, arms, a.seeds, initial),
    }
    out = a.out or Path(f"bench/results/credit-noise-{a.task}.json")
    out.write_text(json.dumps(result, indent=1) + "\n")
    out.with_suffix(".md").write_text(table(result, arms))


def table(result: dict[str, Any], arms: list[str]) -> str:
    lines = [
        f"# Credit error against PPO outcome: {result['args']['task']}\n",
        f"`bench/credit_noise_bench.py`, args {result['args']}; machine {result['machine']}.\n",
        "Each arm minus token Shapley without noise (noise 0), paired by seed, mean and 95 % "
        "CI; the verdict at a study's default margin, a fifth of what sparse gains over the "
        f"initial policy (held-out reward {result['initial']:.4f}).\n",
    ]
    for key in ("auc", "final"):
        s = result["summary"][key]
        lines += [
            f"\n## {key} (margin {s['margin']:.4f})\n",
            "| arm | difference | 95 % CI | verdict |",
            "|---|---|---|---|",
        ]
        for arm in arms:
            if (row := s["versus_reference"].get(arm)) is None:
                continue
            lines.append(
                f"| {arm} | {row['mean']:+.4f} | [{row['low']:+.4f}, {row['high']:+.4f}] "
                f"| {row['verdict']} |"
            )
    costs: dict[str, list[float]] = {}
    for run in result["runs"]:
        costs.setdefault(run["arm"], []).append(run["train_seconds"])
    lines += ["\n| arm | training seconds a run (mean) |", "|---|---|"]
    lines += [f"| {arm} | {statistics.fmean(costs[arm]):.1f} |" for arm in arms if arm in costs]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
