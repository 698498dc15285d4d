"""Amortized Shapley credit on the built-in task: what its explainer costs to train, how
accurate its credits are for how many RM rows, and what a PPO step with it costs beside a
sparse one.

    .venv/bin/python bench/amortized_bench.py --out bench/results/amortized.json

Needs the built-in task prepared (`shapetune prepare`). In order:

1. The explainer of the RM for `--length`-token responses (`trainers.explainer`): its build
   figures (time, rows, fit), from this sitting or from the sitting that built it (its
   stage record under $SHAPETUNE_HOME/explainers; `--rebuild` builds it again).
2. bf16 on this CPU: the same masked rows scored by the RM in float32 and by its bf16 copy
   (time), and token Shapley credits (leverage, 8 permutations, one seed) from each (their
   relative L2 distance).
3. Two PPO runs in one process, their steps alternated so that both see the same load:
   `amortized` at its defaults (from the explainer) and `sparse`, same seed and critic
   start, batch `--batch`, 2 torch threads. Step time: mean wall seconds of steps 2..N
   (step 1 warms up). RM rows a response: attribution's rows in the amortized run's steps
   (audits included), over its responses.
4. Error at the start, middle and end of the amortized run: `--responses` held-out prompts,
   one response each sampled from the run's policy then. Against exact Shapley values (all
   coalitions) of the response cut to its first `--exact-tokens` tokens, and against a
   high-budget reference (leverage, `--reference-permutations`) on the whole response.
   Credits: the run's network as it is then, refined by 0, 1, 2, 4 or 8 coalition pairs a
   response (1, 3, 5, 9, 17 rows). Error = mean over responses of |phi - ref| / |ref|.

Writes JSON and a markdown table (.md) beside `--out`.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from common import machine

from shaping.attribution.amortized import AmortizedAttributor
from shaping.attribution.shapley import ShapleyAttributor
from shaping.batch import RolloutBatch
from shaping.explainer import relative_error
from shaping.reward_model import HFRewardModel, in_dtype
from shaping.scorer import RewardScorer
from trainers.config import TrainConfig
from trainers.explainer import ensure_explainer, explainers_root
from trainers.models import Run, sample
from trainers.ppo import CostMeter, build_run, ppo_step
from trainers.tasks import make_task

PAIRS = (0, 1, 2, 4, 8)


def run_config(method: str, a: argparse.Namespace) -> TrainConfig:
    return TrainConfig.from_dict(
        {
            "task": {"name": "imdb-sentiment"},
            "shaping": {"weights": {method: 1.0}},
            "ppo": {
                "rollout_batch": a.batch,
                "minibatch": a.batch // 2,
                "epochs": 2,
                "response_length": a.length,
                "critic_init": "reward_model",
            },
            "steps": a.steps,
            "eval_interval": a.steps,
            "seed": 0,
            "device": "cpu",
            "torch_threads": 2,
        }
    )


def held_out(run: Run, n: int, scorer: RewardScorer) -> RolloutBatch:
    """One response sampled by the run's policy now for each of `n` held-out prompts,
    scored by `scorer` (which keeps the states and prefix scores the network reads)."""
    prompts = run.eval_prompts[:n]
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(1234)
        responses = sample(run.policy, prompts, run.sampling, run.device).response_lists()
    scores = scorer.score_responses(prompts, responses)
    return RolloutBatch.from_lists(prompts, responses, scores.tolist(), pad_id=run.pad_id)


def cut(batch: RolloutBatch, tokens: int, scorer: RewardScorer) -> RolloutBatch:
    prompts = [batch.prompt(i) for i in range(batch.size)]
    responses = [batch.response(i)[:tokens] for i in range(batch.size)]
    scores = scorer.score_responses(prompts, responses)
    return RolloutBatch.from_lists(prompts, responses, scores.tolist(), pad_id=0)


def errors(amortized: AmortizedAttributor, batch: RolloutBatch, truth: torch.Tensor) -> dict:
    """Error against `truth` for each number of pairs, the network as it is."""
    out = {}
    for pairs in PAIRS:
        probe = copy.deepcopy(amortized)  # its own generator and rows: the run's stay as they were
        credits = probe.credit(probe.inputs(batch, pairs), batch.response_ids.shape[1])
        out[str(pairs)] = statistics.fmean(
            relative_error(credits[i, : batch.lengths[i]], truth[i, : batch.lengths[i]])
            for i in range(batch.size)
        )
    return out


def accuracy(run: Run, a: argparse.Namespace) -> dict[str, Any]:
    amortized = run.shaper.attributors["amortized"]
    assert isinstance(amortized, AmortizedAttributor)
    scorer = amortized.scorer
    batch = held_out(run, a.responses, scorer)
    short = cut(batch, a.exact_tokens, scorer)
    exact = ShapleyAttributor(scorer, max_exact_players=16).rm_credits(short)
    reference = ShapleyAttributor(scorer, permutations=a.reference_permutations, seed=7).rm_credits(
        batch
    )
    return {
        "mean_tokens": float(batch.lengths.float().mean()),
        "versus_exact": errors(amortized, short, exact),
        "versus_reference": errors(amortized, batch, reference),
    }


def bf16(task: Any, run: Run, a: argparse.Namespace) -> dict[str, float]:
    rm = task.load_reward_model()
    assert isinstance(rm, HFRewardModel)
    full = RewardScorer(rm)
    half = RewardScorer(rm, coalition_rm=in_dtype(rm, torch.bfloat16))
    batch = held_out(run, a.responses, full)
    half.score_responses(
        [batch.prompt(i) for i in range(batch.size)], [batch.response(i) for i in range(batch.size)]
    )
    out: dict[str, float] = {}
    credits = {}
    for name, scorer in (("float32", full), ("bfloat16", half)):
        before = scorer.stats.model_seconds
        credits[name] = ShapleyAttributor(scorer, seed=3).rm_credits(batch)
        out[f"{name}_model_seconds"] = scorer.stats.model_seconds - before
    out["speedup"] = out["float32_model_seconds"] / out["bfloat16_model_seconds"]
    out["credit_change"] = relative_error(credits["bfloat16"], credits["float32"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--length", type=int, default=24)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--responses", type=int, default=32)
    parser.add_argument("--exact-tokens", type=int, default=12)
    parser.add_argument("--reference-permutations", type=int, default=64)
    parser.add_argument("--rebuild", action="store_true", help="Build the explainer again.")
    parser.add_argument("--home", default=os.environ.get("SHAPETUNE_HOME", "~/.shapetune"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/amortized.json"))
    a = parser.parse_args()
    torch.set_num_threads(2)
    home = Path(a.home).expanduser()
    task = make_task("imdb-sentiment", home)
    result: dict[str, Any] = {"machine": machine(), "args": {k: str(v) for k, v in vars(a).items()}}

    stage = ensure_explainer(task, a.length, explainers_root(home), force=a.rebuild)
    result["explainer"] = {**stage.info, "built_in_this_sitting": stage.built}
    print("explainer", json.dumps(result["explainer"]), flush=True)

    runs = {
        m: build_run(run_config(m, a), task, explainers_root(home)) for m in ("amortized", "sparse")
    }
    result["bf16"] = bf16(task, runs["sparse"], a)
    print("bf16", json.dumps(result["bf16"]), flush=True)
    meters = {m: CostMeter(r.device) for m, r in runs.items()}
    seconds: dict[str, list[float]] = {m: [] for m in runs}
    rows, responses = 0, 0
    result["accuracy"] = {"0": accuracy(runs["amortized"], a)}
    for step in range(1, a.steps + 1):
        for method, run in runs.items():
            before = run.scorer.stats.rows
            started = time.perf_counter()
            with meters[method].charging(run.shaper, responses=a.batch):
                ppo_step(run, step, meters[method])
            seconds[method].append(time.perf_counter() - started)
            if method == "amortized":
                rows += run.scorer.stats.rows - before - a.batch  # less the scoring pass
                responses += a.batch
        print(step, {m: round(s[-1], 2) for m, s in seconds.items()}, flush=True)
        if step in (a.steps // 2, a.steps):
            result["accuracy"][str(step)] = accuracy(runs["amortized"], a)
            print(step, json.dumps(result["accuracy"][str(step)]), flush=True)
    amortized = runs["amortized"].shaper.attributors["amortized"]
    result["ppo"] = {
        "step_seconds": {m: statistics.fmean(s[1:]) for m, s in seconds.items()},
        "ratio": statistics.fmean(seconds["amortized"][1:])
        / statistics.fmean(seconds["sparse"][1:]),
        "attribution_rows_per_response": rows / responses,
        "amortized_metrics": amortized.metrics(),
    }
    print("ppo", json.dumps(result["ppo"]), flush=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    a.out.with_suffix(".md").write_text(table(result))


def table(r: dict[str, Any]) -> str:
    m, e, p, b = r["machine"], r["explainer"], r["ppo"], r["bf16"]
    lines = [
        "# Amortized Shapley credit (bench/amortized_bench.py)\n",
        f"Machine: {m['cpu']} ({', '.join(m['cpu_flags'])}), {m['cores']} cores, load "
        f"{m['load_at_start']} at the start; args {r['args']}.\n",
        f"Explainer: {e['responses']} responses, {e['rm_rows']} RM rows, "
        f"{e['sample_and_score_seconds']} s sampling and scoring + {e['train_seconds']} s "
        f"training ({e['build_seconds']} s in all); held-out R^2 of the FastSHAP fit "
        f"{e['held_out_r2']}.\n",
        f"bf16: masked rows scored {b['speedup']:.2f}x as fast as float32; token Shapley "
        f"credits moved by {100 * b['credit_change']:.2f} % (relative L2).\n",
        f"PPO step (mean of steps 2..N): amortized {p['step_seconds']['amortized']:.2f} s, "
        f"sparse {p['step_seconds']['sparse']:.2f} s: {p['ratio']:.2f}x; attribution RM rows "
        f"a response {p['attribution_rows_per_response']:.2f} (audits included).\n",
        "| step | against | " + " | ".join(f"{1 + 2 * k} rows" for k in PAIRS) + " |",
        "|---|---|" + "---|" * len(PAIRS),
    ]
    for step, acc in r["accuracy"].items():
        for against in ("versus_exact", "versus_reference"):
            cells = " | ".join(f"{acc[against][str(k)]:.3f}" for k in PAIRS)
            lines.append(f"| {step} | {against.split('_')[1]} | {cells} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
