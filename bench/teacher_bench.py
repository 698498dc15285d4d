"""Issue 11's teacher benchmark: token Shapley estimators at equal RM rows, and bf16 scoring.

    .venv/bin/python bench/teacher_bench.py            # full run (~20 min at 1 thread)
    .venv/bin/python bench/teacher_bench.py --quick    # smoke: 2 responses, 2 seeds, small ref

Needs the built-in task prepared (`shapetune prepare`; --home, default $SHAPETUNE_HOME or
~/.shapetune). Writes bench/results/teacher.json and teacher.md (--out to move them).

Game: the built-in RM on `--responses` eval prompts, each with a 24-token sample of the
built-in policy (`attribution_bench.policy_batch`); players are the response tokens (M = 24).
Reference: the mean of two independent antithetic runs of our permutation sampler,
`--reference-permutations` in all (2 x 500 by default: ~184k rows for 8 responses), cached in
bench/results/teacher-reference.json keyed by the RM's weights; half-to-half differences
estimate its own error, reported with it.

1. Estimators of `ShapleyAttributor` (`estimator` = permutation, leverage, kernel) at
   `permutations` P = 4, 8 (the default), 16, the budget P(M + 1) of the issue: at most
   P(M - 1) + 1 distinct RM rows per response for all three (v(N) is the batch's score,
   v(empty) one row; permutations that share a first or last player repeat a row, which is
   scored once). Rows actually scored are counted by the `RewardScorer` and reported. Error = mean
   over responses and seeds of ||phi - phi_ref|| / ||phi_ref||, with its standard error.
2. bf16 scoring: the coalition rows of one leverage run (P = 8) scored by the RM in float32
   and in bfloat16 (`model.to(torch.bfloat16)`), `rows_per_forward` 256 as in training:
   seconds per 1,000 rows (best of 3), the scores' difference, and the credits' difference
   (the same run of the sampler on each RM) against the sampler's own error.
3. Bias: the mean of `--bias-seeds` runs of each estimator at P = 8 against the reference.
   Permutation sampling is unbiased, so its mean's error falls as 1 / sqrt(runs) to the
   reference's own; a regression estimator is a ratio of sampled sums, unbiased only as its
   budget grows, and what its mean keeps is its bias (an amortized network regressing many
   labels averages their noise away, not their bias).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from attribution_bench import ReferenceCache, one_response, policy_batch, sampled_reference
from common import machine

from shaping.attribution.shapley import ESTIMATORS, ShapleyAttributor
from shaping.batch import RolloutBatch
from shaping.reward_model import HFRewardModel
from shaping.scorer import RewardScorer
from trainers.tasks.imdb.task import ImdbSentimentTask

log = logging.getLogger("teacher_bench")

RESULTS = Path(__file__).parent / "results"
M = 24
"""Response tokens: the issue's setting."""


def reference(
    rm: HFRewardModel, batch: RolloutBatch, cache: ReferenceCache, permutations: int
) -> tuple[torch.Tensor, float]:
    """Reference credits (n, M) and their estimated relative error, cached per response."""
    kind = f"antithetic x{permutations}"
    keys = [cache.key(batch.prompt(i), batch.response(i), kind) for i in range(batch.size)]
    for i, key in enumerate(keys):  # one response at a time: a killed run keeps what it did
        if cache.get(key) is None:
            log.info("computing the %s reference of response %d", kind, i)
            started = time.perf_counter()
            a, b = (h[0] for h in sampled_reference(rm, one_response(batch, i), permutations))
            seconds = time.perf_counter() - started
            cache.put(key, {"a": a.tolist(), "b": b.tolist(), "seconds": seconds})
    a = torch.tensor([cache.entries[k]["a"] for k in keys])  # (n, M)
    b = torch.tensor([cache.entries[k]["b"] for k in keys])
    ref = (a + b) / 2
    # Each half has about sqrt(2) times the error of the mean: |a - b| / 2 estimates the mean's.
    return ref, float(((a - b).norm(dim=1) / 2 / ref.norm(dim=1)).mean())


def relative_errors(credits: torch.Tensor, ref: torch.Tensor) -> list[float]:
    return ((credits - ref).norm(dim=1) / ref.norm(dim=1)).tolist()


def summary(errors: list[float]) -> dict[str, float]:
    sem = statistics.stdev(errors) / len(errors) ** 0.5 if len(errors) > 1 else 0.0
    return {"error": statistics.fmean(errors), "sem": sem}


def sweep(
    rm: HFRewardModel, batch: RolloutBatch, ref: torch.Tensor, budgets: list[int], seeds: int
) -> list[dict[str, Any]]:
    out = []
    for P in budgets:
        for estimator in ESTIMATORS:
            errors, rows, seconds = [], [], 0.0
            for seed in range(seeds):
                scorer = RewardScorer(rm)
                attributor = ShapleyAttributor(
                    scorer, max_exact_players=1, permutations=P, estimator=estimator, seed=seed
                )
                errors += relative_errors(attributor.attribute(batch), ref)
                rows.append(scorer.stats.rows / batch.size)
                seconds += attributor.seconds - scorer.stats.model_seconds
            row = {
                "estimator": estimator,
                "permutations": P,
                "budget_rows": P * (M + 1),
                "rows_per_response": statistics.fmean(rows),
                "seconds_outside_rm_per_response": seconds / seeds / batch.size,
                **summary(errors),
            }
            log.info("%s", row)
            out.append(row)
    return out


def seconds_per_1000_rows(
    models: dict[str, HFRewardModel], ids: torch.Tensor, lengths: torch.Tensor
) -> dict[str, float]:
    """Per model, best of 3 of scoring the rows (N, width) as `RewardScorer` does; the models
    take turns, so a neighbour's load falls on both."""
    best = dict.fromkeys(models, float("inf"))
    for _ in range(3):
        for name, rm in models.items():
            started = time.perf_counter()
            RewardScorer(rm)._forward_packed(ids, lengths)
            best[name] = min(best[name], time.perf_counter() - started)
    return {name: 1000 * seconds / ids.shape[0] for name, seconds in best.items()}


def bf16(rm: HFRewardModel, batch: RolloutBatch, ref: torch.Tensor, seeds: int) -> dict[str, Any]:
    half = HFRewardModel(copy.deepcopy(rm.model).to(torch.bfloat16), rm.tokenizer)
    # The rows of one leverage run: (N, P + M) with their lengths, as the scorer packs them.
    attributor = ShapleyAttributor(
        RewardScorer(rm), max_exact_players=1, estimator="leverage", seed=0
    )
    owners = [attributor._coalitions(M)[0] for _ in range(batch.size)]
    rows = torch.cat(
        [
            torch.cat(
                [
                    batch.prompt_ids[i].expand(k.shape[0], -1),
                    torch.where(k, batch.response_ids[i], rm.mask_token_id),
                ],
                dim=1,
            )
            for i, k in enumerate(owners)
        ]
    )
    lengths = torch.full((rows.shape[0],), rows.shape[1])
    full = RewardScorer(rm)._forward_packed(rows, lengths)[0]
    low = RewardScorer(half)._forward_packed(rows, lengths)[0]
    credit_diff, errors32, errors16 = [], [], []
    for seed in range(seeds):
        runs = []
        for model in (rm, half):
            sampler = ShapleyAttributor(
                RewardScorer(model), max_exact_players=1, estimator="leverage", seed=seed
            )
            runs.append(sampler.attribute(batch))
        credit_diff += relative_errors(runs[1], runs[0])
        errors32 += relative_errors(runs[0], ref)
        errors16 += relative_errors(runs[1], ref)
    return {
        "rows": rows.shape[0],
        "row_tokens": rows.shape[1],
        "seconds_per_1000_rows": seconds_per_1000_rows(
            {"float32": rm, "bfloat16": half}, rows, lengths
        ),
        "score_std": float(full.std()),
        "score_abs_diff_mean": float((low - full).abs().mean()),
        "score_abs_diff_max": float((low - full).abs().max()),
        "credit_relative_diff": summary(credit_diff),
        "error_float32": summary(errors32),
        "error_bfloat16": summary(errors16),
    }


def bias(
    rm: HFRewardModel, batch: RolloutBatch, ref: torch.Tensor, runs: int
) -> list[dict[str, Any]]:
    out = []
    for estimator in ESTIMATORS:
        total = torch.zeros_like(ref)
        for seed in range(runs):
            total += ShapleyAttributor(
                RewardScorer(rm), max_exact_players=1, estimator=estimator, seed=10_000 + seed
            ).attribute(batch)
        row = {"estimator": estimator, "runs": runs, **summary(relative_errors(total / runs, ref))}
        log.info("%s", row)
        out.append(row)
    return out


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "# Teacher: token Shapley estimators at equal RM rows, and bf16 scoring",
        "",
        f"`{results['command']}` on {results['machine']}, {results['threads']} torch thread, "
        f"load average {results['load_average']}, {results['wall_minutes']:.1f} min.",
        "",
        f"Built-in RM, {results['responses']} policy samples of M = {M} tokens, "
        f"{results['seeds']} seeds. Reference: {results['reference_kind']}, its own estimated "
        f"error {100 * results['reference_error']:.2f} %.",
        "",
        "| P (`permutations`) | budget P(M + 1) | estimator | RM rows / response | "
        "rel. L2 error | ± s.e. | s outside RM / response |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results["sweep"]:
        lines.append(
            f"| {r['permutations']} | {r['budget_rows']} | {r['estimator']} | "
            f"{r['rows_per_response']:.1f} | {100 * r['error']:.2f} % | "
            f"{100 * r['sem']:.2f} | {r['seconds_outside_rm_per_response']:.4f} |"
        )
    b = results["bf16"]
    t = b["seconds_per_1000_rows"]
    lines += [
        "",
        f"## bf16 scoring ({b['rows']} rows of {b['row_tokens']} tokens, leverage P = 8)",
        "",
        f"* seconds per 1,000 rows: float32 {t['float32']:.3f}, bfloat16 {t['bfloat16']:.3f} "
        f"({t['bfloat16'] / t['float32']:.2f}x)",
        f"* scores: std {b['score_std']:.3f}; |bf16 - fp32| mean {b['score_abs_diff_mean']:.4f}, "
        f"max {b['score_abs_diff_max']:.4f}",
        f"* credits, bf16 vs fp32 (same draws): {100 * b['credit_relative_diff']['error']:.2f} % "
        "relative L2",
        f"* error vs the reference: fp32 {100 * b['error_float32']['error']:.2f} %, "
        f"bf16 {100 * b['error_bfloat16']['error']:.2f} %",
        "",
        "## Bias: the mean of many runs at P = 8 against the reference",
        "",
        "| estimator | runs | rel. L2 error of their mean | ± s.e. |",
        "|---|---|---|---|",
    ]
    for r in results["bias"]:
        lines.append(
            f"| {r['estimator']} | {r['runs']} | {100 * r['error']:.2f} % | {100 * r['sem']:.2f} |"
        )
    return "\n".join([*lines, ""])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="2 responses, 2 seeds, small ref")
    parser.add_argument(
        "--home",
        type=Path,
        default=Path(os.environ.get("SHAPETUNE_HOME", Path.home() / ".shapetune")),
    )
    parser.add_argument("--size", default="default", help="built-in task size (default: default)")
    parser.add_argument("--responses", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--budgets", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--reference-permutations", type=int, default=1000)
    parser.add_argument("--bias-seeds", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.quick:
        args.responses, args.seeds, args.reference_permutations = 2, 2, 40
        args.bias_seeds = 4
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    log.setLevel(logging.INFO)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    load_average = ", ".join(f"{x:.1f}" for x in os.getloadavg())

    task = ImdbSentimentTask(args.home, size=args.size)
    rm = task.load_reward_model()
    batch = policy_batch(task, rm, args.responses, M)
    cache = ReferenceCache(args.out / "teacher-reference.json", rm)
    ref, ref_error = reference(rm, batch, cache, args.reference_permutations)
    results: dict[str, Any] = {
        "responses": args.responses,
        "seeds": args.seeds,
        "reference_kind": f"antithetic x{args.reference_permutations}",
        "reference_error": ref_error,
        "sweep": sweep(rm, batch, ref, args.budgets, args.seeds),
        "bf16": bf16(rm, batch, ref, args.seeds),
        "bias": bias(rm, batch, ref, args.bias_seeds),
    }
    results["command"] = " ".join([".venv/bin/python bench/teacher_bench.py", *sys.argv[1:]])
    results["machine"] = machine()
    results["threads"] = args.threads
    results["load_average"] = load_average
    results["wall_minutes"] = (time.perf_counter() - started) / 60
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "-quick" if args.quick else ""
    (args.out / f"teacher{suffix}.json").write_text(json.dumps(results, indent=1))
    (args.out / f"teacher{suffix}.md").write_text(markdown(results))


if __name__ == "__main__":
    main()
