"""Issue 11's benchmark: amortized credit against its teacher on the built-in task.

    .venv/bin/python bench/amortized_bench.py --out bench/results/amortized.json

Needs the built-in task prepared (`shapetune prepare`). For each `label_fraction` (default
0.05, 0.1, 0.25), one PPO run with weights {amortized: 1} and teacher `shapley` at its
defaults (tokens, 8 antithetic permutations) and `--error-ratio` (amortized.error_ratio), batch 32, responses of up to 24 tokens, 2 torch
threads, 20 steps (the issue's setting). Per step, from the run's own reports: the shape
phase's share of the step's training time (attribution), RM rows per response, whether the
network was in use (fallback) and its error estimates.

Then the error against Shapley values: 16 held-out prompts, a 24-token response each sampled
from the policy of the default run at its end (after warm-up). Reference: the mean of two
independent runs of our sampler, `--reference-permutations` antithetic permutations each; half
their difference estimates the reference's own error, reported with it. Credits compared:
each run's network as it ended (frozen, as `explain --checkpoint` uses it; corrected to
R - v(empty)), and the teacher at its default budget over 3 seeds. Error = mean over
responses of ||phi - phi_ref|| / ||phi_ref||; rows = the scorer's RM rows per response.
Writes JSON and a markdown table (.md) beside `--out`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from common import machine

from shaping.attribution import build_attributor
from shaping.attribution.shapley import ShapleyAttributor
from shaping.batch import RolloutBatch
from shaping.scorer import RewardScorer
from trainers.checkpoint import load
from trainers.config import TrainConfig
from trainers.ppo import Hooks, train
from trainers.tasks import make_task

LENGTH = 24


def run_config(fraction: float, steps: int, run_dir: Path, error_ratio: float) -> TrainConfig:
    return TrainConfig.from_dict(
        {
            "task": {"name": "imdb-sentiment"},
            "shaping": {
                "weights": {"amortized": 1.0},
                "options": {"amortized": {"label_fraction": fraction, "error_ratio": error_ratio}},
            },
            "ppo": {"rollout_batch": 32, "minibatch": 16, "epochs": 2, "response_length": LENGTH},
            "steps": steps,
            "eval_interval": steps,
            "eval_prompts": 16,
            "seed": 0,
            "torch_threads": 2,
            "run_dir": str(run_dir),
        }
    )


def ppo_run(
    task: Any, fraction: float, steps: int, run_dir: Path, error_ratio: float
) -> dict[str, Any]:
    """One run; per step: attribution share, rows per response, fallback, error estimates."""
    per_step: list[dict[str, float]] = []
    last: dict[str, float] = {}

    def report(step: int, m: dict[str, float]) -> None:
        nonlocal last
        if step > 0:
            shape = m["cost/shape_seconds"] - last.get("cost/shape_seconds", 0.0)
            evaluate = m.get("cost/evaluate_seconds", 0.0) - last.get("cost/evaluate_seconds", 0.0)
            rows = m["cost/rm_rows"] - last.get("cost/rm_rows", 0.0)
            per_step.append(
                {
                    "step": step,
                    "train_seconds": m["cost/step_seconds"] - evaluate,
                    "shape_seconds": shape,
                    "rows_per_response": rows / 32,
                    "fallback": m["shaping/amortized_fallback"],
                    "error": m["shaping/amortized_error"],
                    "teacher_error": m["shaping/amortized_teacher_error"],
                }
            )
        last = m

    started = time.perf_counter()
    config = run_config(fraction, steps, run_dir, error_ratio)
    result = train(config, task, Hooks(report=report))
    warm = [s for s in per_step if s["fallback"] == 0.0]
    return {
        "label_fraction": fraction,
        "wall_seconds": time.perf_counter() - started,
        "per_step": per_step,
        "warm_up_steps": next((s["step"] - 1 for s in per_step if not s["fallback"]), steps),
        "share_whole_run": sum(s["shape_seconds"] for s in per_step)
        / sum(s["train_seconds"] for s in per_step),
        "share_after_warm_up": (
            sum(s["shape_seconds"] for s in warm) / sum(s["train_seconds"] for s in warm)
            if warm
            else float("nan")
        ),
        "rows_whole_run": statistics.fmean(s["rows_per_response"] for s in per_step),
        "rows_after_warm_up": (
            statistics.fmean(s["rows_per_response"] for s in warm) if warm else float("nan")
        ),
        "final_rm": result.final["eval/rm_mean"],
    }


def fresh_responses(task: Any, run_dir: Path, n: int) -> tuple[list[list[int]], list[list[int]]]:
    """n held-out prompts and a LENGTH-token response each from the run's final policy."""
    policy = task.load_policy()
    policy.load_state_dict(load(run_dir)["policy"])
    prompts = task.prompts("eval")[:n]  # all the same length: no padding
    torch.manual_seed(1)
    with torch.no_grad():
        out = policy.generate(
            torch.tensor(prompts),
            attention_mask=torch.ones(len(prompts), len(prompts[0]), dtype=torch.long),
            do_sample=True,
            top_k=0,
            max_new_tokens=LENGTH,
            min_new_tokens=LENGTH,
            pad_token_id=task.tokenizer.pad_token_id,
        )
    return prompts, out[:, len(prompts[0]) :].tolist()


def scored(rm: Any, prompts: list[list[int]], responses: list[list[int]]) -> RolloutBatch:
    scores = RewardScorer(rm).score_responses(prompts, responses)
    pad = rm.tokenizer.pad_token_id
    return RolloutBatch.from_lists(prompts, responses, scores.tolist(), pad)


def credits_of(attributor_for: Any, rm: Any, batch: RolloutBatch) -> tuple[torch.Tensor, float]:
    """Credits of `batch` by the attributor `attributor_for(scorer)` builds, and its rows
    per response (the scorer scored the batch first, as PPO does)."""
    scorer = RewardScorer(rm)
    attributor = attributor_for(scorer)  # first: it may ask the scorer to keep states
    scorer.score_responses([batch.prompt(i) for i in range(batch.size)], batch_responses(batch))
    before = scorer.stats.rows
    credits = attributor.attribute(batch)
    return credits, (scorer.stats.rows - before) / batch.size


def batch_responses(batch: RolloutBatch) -> list[list[int]]:
    return [batch.response(i) for i in range(batch.size)]


def relative_error(credits: torch.Tensor, reference: torch.Tensor) -> float:
    return float(((credits - reference).norm(dim=1) / reference.norm(dim=1)).mean())


def trained_network(run_dir: Path, scorer: RewardScorer) -> Any:
    saved = load(run_dir)
    config = TrainConfig.from_dict(saved["config"])
    amortized = build_attributor("amortized", scorer, config.method_options())
    amortized.load_state(saved["attributors"]["amortized"])
    amortized.freeze()
    return amortized


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fractions", default="0.05,0.1,0.25")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--error-ratio", type=float, default=1.0, help="amortized.error_ratio")
    parser.add_argument("--responses", type=int, default=16)
    parser.add_argument("--reference-permutations", type=int, default=200)
    parser.add_argument("--home", default=os.environ.get("SHAPETUNE_HOME", "~/.shapetune"))
    parser.add_argument("--out", type=Path, required=True)
    a = parser.parse_args()
    started = time.perf_counter()
    task = make_task("imdb-sentiment", Path(a.home).expanduser())
    rm = task.load_reward_model()
    fractions = [float(f) for f in a.fractions.split(",")]
    runs, dirs = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for fraction in fractions:
            dirs[fraction] = Path(tmp) / f"run-{fraction}"
            runs.append(ppo_run(task, fraction, a.steps, dirs[fraction], a.error_ratio))
            print(json.dumps({k: v for k, v in runs[-1].items() if k != "per_step"}))
        default = 0.1 if 0.1 in dirs else fractions[0]
        batch = scored(rm, *fresh_responses(task, dirs[default], a.responses))
        halves = []
        for seed in (10_001, 10_002):  # seeds no other run uses
            reference_run = ShapleyAttributor(
                RewardScorer(rm),
                max_exact_players=1,
                permutations=a.reference_permutations,
                seed=seed,
            )
            halves.append(reference_run.attribute(batch))
        reference = (halves[0] + halves[1]) / 2
        reference_error = relative_error(halves[0], reference)  # = ||a - b|| / 2 / ||ref||
        teacher = []
        for seed in range(3):
            credits, rows = credits_of(
                lambda s, seed=seed: ShapleyAttributor(s, seed=seed), rm, batch
            )
            teacher.append({"error": relative_error(credits, reference), "rows": rows})
        networks = {}
        for fraction in fractions:
            credits, rows = credits_of(lambda s, f=fraction: trained_network(dirs[f], s), rm, batch)
            networks[str(fraction)] = {"error": relative_error(credits, reference), "rows": rows}
    result = {
        "machine": machine(),
        "command": " ".join(["bench/amortized_bench.py", *sys.argv[1:]]),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "runs": runs,
        "error": {
            "responses": a.responses,
            "reference_permutations": 2 * a.reference_permutations,
            "reference_error": reference_error,
            "teacher": {
                "error": statistics.fmean(t["error"] for t in teacher),
                "rows": statistics.fmean(t["rows"] for t in teacher),
                "seeds": teacher,
            },
            "networks": networks,
        },
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1, default=float) + "\n")
    a.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


def markdown(result: dict[str, Any]) -> str:
    e = result["error"]
    lines = [
        f"Machine: {result['machine']}; {result['wall_seconds']:.0f} s in all.",
        "",
        "| label_fraction | warm-up steps | attribution, whole run | after warm-up "
        "| RM rows/resp, whole run | after warm-up | error vs Shapley | rows/resp (network) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in result["runs"]:
        net = e["networks"][str(run["label_fraction"])]
        lines.append(
            f"| {run['label_fraction']} | {run['warm_up_steps']} | {100 * run['share_whole_run']:.0f} % "
            f"| {100 * run['share_after_warm_up']:.0f} % | {run['rows_whole_run']:.1f} "
            f"| {run['rows_after_warm_up']:.1f} | {net['error']:.3f} | {net['rows']:.1f} |"
        )
    t = e["teacher"]
    lines += [
        "",
        f"Teacher (shapley, 8 permutations) at its default budget: error {t['error']:.3f}, "
        f"{t['rows']:.1f} RM rows per response (3 seeds). Reference: {e['reference_permutations']} "
        f"permutations a response, its own error about {e['reference_error']:.3f}; "
        f"{e['responses']} responses of {LENGTH} tokens.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
