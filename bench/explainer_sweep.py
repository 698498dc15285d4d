"""How the explainer's error falls with what it is trained on: responses, coalition pairs a
response, network size. The curve behind `trainers.explainer.ExplainerSettings`.

    .venv/bin/python bench/explainer_sweep.py --out bench/results/explainer-sweep.json

Needs the built-in task prepared. Training data is collected once, at the largest
`--responses` and `--pairs`, and each variant trains on a part of it (the first n
responses, the first k pairs of each); so rows = n (2 + 2k) (a score and v(empty) a
response). Test: `--test` held-out prompts, a 24-token response each from the initial
policy, against a high-budget token-Shapley reference (leverage, `--reference-permutations`).
Error = mean over responses of |phi - ref| / |ref|, the network's credits refined by 0 and 2
pairs (1 and 5 RM rows a response).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from common import machine

from shaping.attribution.amortized import AmortizedAttributor, Inputs
from shaping.attribution.shapley import ShapleyAttributor
from shaping.batch import RolloutBatch
from shaping.explainer import relative_error
from trainers.config import ShapingConfig
from trainers.explainer import ExplainerSettings, collect, fit
from trainers.models import build_shaper, generation_config, sample
from trainers.tasks import make_task


def test_batch(task: Any, attributor: AmortizedAttributor, n: int, length: int) -> RolloutBatch:
    policy = task.load_policy().eval()
    tok = task.tokenizer
    generation = generation_config(tok.eos_token_id, tok.pad_token_id, length, 1.0, False)
    prompts = task.prompts("eval")[:n]
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(99)
        responses = sample(policy, prompts, generation, torch.device("cpu")).response_lists()
    scores = attributor.scorer.score_responses(prompts, responses)
    return RolloutBatch.from_lists(prompts, responses, scores.tolist(), tok.pad_token_id)


def first_pairs(x: Inputs, k: int) -> Inputs:
    """The response's first k pairs (a pair is row j and row j + P)."""
    P = x.coalitions.shape[0] // 2  # 0 for a one-token response: nothing to keep
    keep = [*range(min(k, P)), *range(P, P + min(k, P))]
    return replace(x, coalitions=x.coalitions[keep], gains=x.gains[keep])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--length", type=int, default=24)
    parser.add_argument("--responses", default="1536,3072,6144,12288")
    parser.add_argument("--pairs", default="2,8,16")
    parser.add_argument("--sizes", default="128x2,256x4", help="WIDTHxLAYERS, at the most data")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--test", type=int, default=48)
    parser.add_argument("--reference-permutations", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--home", default=os.environ.get("SHAPETUNE_HOME", "~/.shapetune"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/explainer-sweep.json"))
    a = parser.parse_args()
    torch.set_num_threads(a.threads)
    task = make_task("imdb-sentiment", Path(a.home).expanduser())
    counts = [int(n) for n in a.responses.split(",")]
    pairs = [int(k) for k in a.pairs.split(",")]
    sizes = [tuple(map(int, s.split("x"))) for s in a.sizes.split(",")]
    most = ExplainerSettings(responses=max(counts), pairs=max(pairs), epochs=a.epochs)
    # Kept: collecting is most of the time, and a sitting that fails later reuses it.
    saved = Path(a.home).expanduser() / "bench" / f"explainer-sweep-{max(counts)}x{max(pairs)}.pt"
    if saved.is_file():
        data, collect_seconds = torch.load(saved, weights_only=False)
    else:
        started = time.perf_counter()
        data, _ = collect(task, a.length, most, lambda *_: None)
        collect_seconds = time.perf_counter() - started
        saved.parent.mkdir(parents=True, exist_ok=True)
        torch.save((data, collect_seconds), saved)
    print(f"collected {len(data)} responses in {collect_seconds:.0f} s", flush=True)

    shaper = build_shaper(
        task.load_reward_model(), ShapingConfig({"amortized": 1.0}), {}, task.tokenizer,
        torch.device("cpu"),
    )  # fmt: skip
    attributor = shaper.attributors["amortized"]
    assert isinstance(attributor, AmortizedAttributor)
    batch = test_batch(task, attributor, a.test, a.length)
    reference = ShapleyAttributor(
        attributor.scorer, permutations=a.reference_permutations, seed=5
    ).rm_credits(batch)
    probe = {k: attributor.inputs(batch, k) for k in (0, 2)}

    def error(net: torch.nn.Module, k: int) -> float:
        attributor.use_explainer(net)  # type: ignore[arg-type]
        credits = attributor.credit(probe[k], batch.response_ids.shape[1])
        return statistics.fmean(
            relative_error(credits[i, : batch.lengths[i]], reference[i, : batch.lengths[i]])
            for i in range(batch.size)
        )

    variants = [(n, k, 128, 2) for n in counts for k in pairs]
    variants += [
        (max(counts), max(pairs), w, layers) for w, layers in sizes if (w, layers) != (128, 2)
    ]
    rows = []
    for n, k, width, layers in variants:
        settings = replace(most, responses=n, pairs=k, width=width, layers=layers)
        part = [first_pairs(x, k) for x in data[:n]]
        started = time.perf_counter()
        with torch.random.fork_rng():
            torch.manual_seed(0)
            net, figures = fit(part, settings, lambda *_: None)
        row = {
            "responses": n,
            "pairs": k,
            "width": width,
            "layers": layers,
            "rm_rows": n * (2 + 2 * k),
            "train_seconds": time.perf_counter() - started,
            "held_out_r2": figures["held_out_r2"],
            "error_1_row": error(net, 0),
            "error_5_rows": error(net, 2),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = {
        "machine": machine(),
        "args": {k: str(v) for k, v in vars(a).items()},
        "collect_seconds": collect_seconds,
        "rows": rows,
    }
    a.out.write_text(json.dumps(out, indent=1) + "\n")
    lines = [
        "# Explainer error against training data and size (bench/explainer_sweep.py)\n",
        f"Machine {out['machine']}; data collected in {collect_seconds:.0f} s.\n",
        "| responses | pairs | width x layers | RM rows | train s | R^2 | error, 1 row | 5 rows |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['responses']} | {r['pairs']} | {r['width']}x{r['layers']} | {r['rm_rows']} | "
        f"{r['train_seconds']:.0f} | {r['held_out_r2']:.3f} | {r['error_1_row']:.3f} | "
        f"{r['error_5_rows']:.3f} |"
        for r in rows
    ]
    a.out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
