"""The credit network's learning curve on the built-in reward model: its error against
Shapley values as a function of the teacher labels it has seen, without PPO in the way.

    .venv/bin/python bench/amortized_curve.py --batches 16 --out bench/results/amortized-curve.json

Needs the built-in task prepared. `--batches` batches of 32 training prompts, a 24-token
response each from the starting policy; each response labelled twice by the teacher
(token Shapley, 8 antithetic permutations, independent seeds). The network
(`CreditNet`, the `amortized` method's) trains on the first label of the first batches, one
batch at a time as PPO would hand them over (`updates` gradient steps of 32 buffered
responses after each), and is scored on the last 2 batches against the mean of their two
labels: relative L2 error ||phi - ref|| / ||ref||, mean over responses. One label's own
error against that mean is the teacher's. Labels are cached in `--labels` (they cost most
of the time: ~12k RM rows a batch).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from shaping.attribution.amortized import CreditNet
from shaping.attribution.shapley import ShapleyAttributor
from shaping.batch import RolloutBatch
from shaping.scorer import RewardScorer
from trainers.tasks import make_task

B, LENGTH, TEST = 32, 24, 2


def collect(home: Path, batches: int) -> list[dict[str, torch.Tensor]]:
    task = make_task("imdb-sentiment", home)
    rm, policy = task.load_reward_model(), task.load_policy()
    prompts = task.prompts("train")
    torch.manual_seed(0)
    out = []
    for b in range(batches):
        chosen = prompts[b * B : (b + 1) * B]  # all bos + prompt_tokens long
        P = len(chosen[0])
        with torch.no_grad():
            ids = policy.generate(
                torch.tensor(chosen),
                attention_mask=torch.ones(B, P, dtype=torch.long),
                do_sample=True,
                top_k=0,
                max_new_tokens=LENGTH,
                min_new_tokens=LENGTH,
                pad_token_id=task.tokenizer.pad_token_id,
            )
        responses = ids[:, P:].tolist()
        scorer = RewardScorer(rm)
        scorer.keep_states = True  # as `amortized` sets it: the states from this pass
        scores = scorer.score_responses(chosen, responses)
        batch = RolloutBatch.from_lists(chosen, responses, scores.tolist(), 0)
        out.append(
            {
                "states": torch.stack(scorer.response_states(batch)),
                "a": ShapleyAttributor(scorer, seed=b).rm_credits(batch),
                "b": ShapleyAttributor(scorer, seed=10_000 + b).rm_credits(batch),
            }
        )
        print(f"batch {b + 1}/{batches} labelled", flush=True)
    return out


def relative(x: torch.Tensor, reference: torch.Tensor) -> float:
    return float(((x - reference).norm(dim=1) / reference.norm(dim=1)).mean())


def curve(data: list[dict[str, torch.Tensor]], width: int, updates: int) -> list[list[float]]:
    """[labels seen, relative error] after each training batch."""
    train, test = data[:-TEST], data[-TEST:]
    states = torch.cat([d["states"] for d in test])
    reference = torch.cat([(d["a"] + d["b"]) / 2 for d in test])
    lengths = torch.full((states.shape[0],), LENGTH)
    torch.manual_seed(0)
    net = CreditNet(states.shape[-1], width)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    X = torch.empty(0, LENGTH, states.shape[-1])
    Y = torch.empty(0, LENGTH)
    points = []
    for d in train:
        X, Y = torch.cat([X, d["states"]]), torch.cat([Y, d["a"]])
        for _ in range(updates):
            pick = torch.randint(len(X), (B,))
            loss = (net(X[pick], torch.full((B,), LENGTH)) - Y[pick]).square().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            points.append([len(X), relative(net(states, lengths), reference)])
    return points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, default=16)
    parser.add_argument("--home", type=Path, default=Path("~/.shapetune").expanduser())
    parser.add_argument("--labels", type=Path, default=Path("/tmp/amortized-labels.pt"))
    parser.add_argument("--out", type=Path, required=True)
    a = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    if a.labels.is_file():
        data = torch.load(a.labels)
    else:
        data = collect(a.home, a.batches)
        torch.save(data, a.labels)
    test = data[-TEST:]
    reference = torch.cat([(d["a"] + d["b"]) / 2 for d in test])
    teacher = relative(torch.cat([d["a"] for d in test]), reference)
    result: dict[str, Any] = {
        "command": f"bench/amortized_curve.py --batches {a.batches}",
        "teacher_error": teacher,
        "note": "the reference is the mean of two labels: one label's error against it is "
        "half its error against the truth in expectation of squares (2 sigma^2 -> sigma^2 / 2)",
        "curves": {},
    }
    for width, updates in [(64, 8), (128, 16), (128, 32)]:
        result["curves"][f"width {width}, {updates} updates"] = curve(data, width, updates)
        print(width, updates, result["curves"][f"width {width}, {updates} updates"], flush=True)
    result["seconds"] = round(time.perf_counter() - started, 1)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
