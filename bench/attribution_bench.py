"""Issue 3's attribution benchmark: error against RM rows, time outside the RM, and the cost
of every registered method at its defaults.

    .venv/bin/python bench/attribution_bench.py            # full run (see bench/README.md)
    .venv/bin/python bench/attribution_bench.py --quick    # smoke: M = 8, 12; 2 responses x 2 seeds

Needs the built-in task prepared (`shapetune prepare`; --home, default $SHAPETUNE_HOME or
~/.shapetune). Writes bench/results/attribution.json, attribution.md and
attribution-error-vs-rows.png (--out to move them).

1. Error vs rows. Players are response tokens; M = 8, 12, 16, 24, 48. Two games:
   * "synthetic": `SyntheticReward` (token values + adjacent pairwise interactions) on random
     word responses; reference = its closed-form Shapley values, checked against the 2^M
     enumeration for M <= 16.
   * "imdb-rm": the built-in RM on held-out review openings (`task.prompts("eval")`) and the
     next M tokens of the same reviews. Reference: `exact_shapley` over all 2^M coalitions
     for M <= 16 (scored by walking the coalition tree with the RM's key/value cache,
     `tree_values`); above that the mean of two independent antithetic runs of our sampler,
     2000 permutations in all at M = 24 and 1000 at M = 48 (the same ~46k rows per
     response), seeds unused elsewhere; half-to-half differences estimate the reference's own
     error, reported with it. RM references are cached in
     bench/results/attribution-reference.json (keyed by RM weights, ids and kind). A run
     without them computes them first: about 20 minutes on an idle 2-core machine, mostly
     M = 48 (`--references-only --players ...` fills the cache; runs over different M can
     share the file).
   Methods, each at row budgets 4(M+1), 10(M+1), 10(2M+1), 40(M+1) per response: our
   `ShapleyAttributor` sampler (max_exact_players=1, so it samples; the most antithetic
   permutations that fit the budget); shap Permutation, Partition (balanced span tree) and
   KernelExplainer (l1_reg=False), each with max_evals / nsamples = the budget; LIME
   (bow=False, every token a feature, num_samples = the budget), its coefficients made to
   sum to R - v(empty) with `conserve`, as our `lime` method does. The library explainers are
   called directly; their model function (`TokenGame`) scores masked rows through a
   `RewardScorer`, so rows are counted and deduplicated as for ours. Error = mean over
   responses and seeds of ||phi - phi_ref|| / ||phi_ref||; rows = mean RewardScorer rows per
   response. A memo of RM row scores (`MemoRewardModel`) is shared by a game's runs: a row
   asked for again (another seed or budget) is not recomputed; the scorer counts rows as it
   always does.
2. Time outside the RM: each method's runs on imdb-rm at 10(2M+1) rows get an empty memo
   of their own, so each of their rows is a real forward: share = 1 - time in the RM's
   forwards / wall time of the attribution, median over seeds.
3. Defaults: every registered method at its default options, batch 32 of prompts from
   `task.prompts("eval")`, 24-token responses sampled from `task.load_policy()`.
"""

from __future__ import annotations

import argparse
import copy
import fcntl
import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import machine

from shaping.attribution import ATTRIBUTORS, make_attributor
from shaping.attribution.base import conserve
from shaping.attribution.shap_explainer import KeepMasker, TokenGame, numpy_seed, span_tree
from shaping.attribution.shapley import ShapleyAttributor, exact_shapley
from shaping.batch import RolloutBatch
from shaping.reward_model import HFRewardModel, RewardModel
from shaping.scorer import RewardScorer
from trainers.tasks.imdb.task import ImdbSentimentTask
from trainers.tasks.synthetic import SyntheticTask

log = logging.getLogger("attribution_bench")

RESULTS = Path(__file__).parent / "results"
METHODS = ("shapley", "shap-permutation", "shap-partition", "shap-kernel", "lime")
EXACT_LIMIT = 16
"""Largest M whose reference enumerates all 2^M coalitions."""


def reference_permutations(M: int, args: argparse.Namespace) -> int:
    """About 46k rows per response for a sampled RM reference: 2000 permutations at M = 24."""
    if args.reference_permutations is not None:
        return int(args.reference_permutations)
    return 2000 if M <= 24 else 1000


def budgets(M: int) -> list[int]:
    """Row budgets per response. 2(M+1)*10 is left out: it is 10 rows from 10(2M+1)."""
    return [4 * (M + 1), 10 * (M + 1), 10 * (2 * M + 1), 40 * (M + 1)]


# ---------------------------------------------------------------------------------------------
# Games: a batch of n responses of M tokens and the reference Shapley values of each


@dataclass
class Game:
    name: str
    M: int
    rm: RewardModel
    batch: RolloutBatch
    reference: torch.Tensor  # (n, M)
    reference_kind: str
    reference_error: float = 0.0
    """Estimated relative L2 error of a sampled reference (0 for exact ones)."""


def scored_batch(
    rm: RewardModel, prompts: list[list[int]], responses: list[list[int]]
) -> RolloutBatch:
    rows = [p + r for p, r in zip(prompts, responses, strict=True)]
    scores = [float(s) for s in RewardScorer(rm).score_rows(rows)]
    pad = rm.tokenizer.pad_token_id if rm.tokenizer.pad_token_id is not None else 0
    return RolloutBatch.from_lists(prompts, responses, scores, pad)


def enumerated_shapley(rm: RewardModel, batch: RolloutBatch) -> torch.Tensor:
    """Exact Shapley values (n, M) from all 2^M coalitions of each response."""
    M = batch.response_ids.shape[1]
    if isinstance(rm, HFRewardModel) and rm.causal:
        values = [tree_values(rm, batch.prompt(i), batch.response(i)) for i in range(batch.size)]
    else:
        k = torch.arange(2**M)
        everything = (k[:, None] >> torch.arange(M)) & 1 == 1  # (2^M, M): bits of k
        values = RewardScorer(rm).coalition_values(batch, [everything] * batch.size)
    return torch.stack([exact_shapley(v, M) for v in values])


@torch.no_grad()
def tree_values(
    rm: HFRewardModel, prompt: list[int], response: list[int], subtree_depth: int = 10
) -> torch.Tensor:
    """v(S) for all 2^M coalitions of one response under a causal RM: (2^M,), coalition k =
    the bits of k.

    The 2^M masked rows share their starts: they are the leaves of a binary tree whose level
    t holds each row's token t, kept or masked. Walking the tree with the RM's key/value
    cache computes each node once, about 2^(M+1) one-token steps instead of 2^M (P + M)
    tokens (12x fewer at M = 16, P = 9). Below the top M - `subtree_depth` levels the tree is
    walked one subtree at a time, which bounds the cache to 2^subtree_depth rows.
    """
    model, M = rm.model, len(response)

    def grow(cache: Any, rows: int, t: int) -> tuple[Any, torch.Tensor]:
        """Each row's two children at position t (masked first, then kept)."""
        cache.batch_repeat_interleave(2)
        ids = torch.tensor([rm.mask_token_id, response[t]]).repeat(rows)[:, None]  # (2 rows, 1)
        out = model.base_model(input_ids=ids, past_key_values=cache, use_cache=True)
        return out.past_key_values, out.last_hidden_state[:, -1]  # (2 rows, H)

    cache = model.base_model(input_ids=torch.tensor([prompt]), use_cache=True).past_key_values
    top = max(0, M - subtree_depth)
    for t in range(top):
        cache, _ = grow(cache, 2**t, t)
    leaves = []
    for r in range(2**top):
        sub = copy.deepcopy(cache)
        sub.batch_select_indices(torch.tensor([r]))
        for t in range(top, M):
            sub, hidden = grow(sub, 2 ** (t - top), t)
        leaves.append(model.score(hidden)[:, 0].float())  # type: ignore[operator]
    # Leaf index has position 0 as its most significant bit; coalition k has it as bit 0.
    k = torch.arange(2**M)
    leaf_of = ((k[:, None] >> torch.arange(M)) & 1) @ (1 << torch.arange(M - 1, -1, -1))
    return torch.cat(leaves)[leaf_of]


def synthetic_game(M: int, n: int) -> Game:
    task = SyntheticTask(n_words=64, response_length=min(M, 128), seed=0)
    rm = task.load_reward_model()
    g = torch.Generator().manual_seed(M)
    first_word = task.tokenizer.mask_token_id + 1
    responses = torch.randint(first_word, len(task.tokenizer), (n, M), generator=g).tolist()
    prompts = task.prompts("eval")[:n]
    batch = scored_batch(rm, prompts, responses)
    reference = torch.stack(
        [rm.exact_shapley(p, r) for p, r in zip(prompts, responses, strict=True)]
    )
    if M <= EXACT_LIMIT:  # the closed form is what every error is measured against: check it
        enumerated = enumerated_shapley(rm, batch)
        if not torch.allclose(enumerated, reference, atol=1e-4):
            raise AssertionError(f"closed-form Shapley values disagree with enumeration at M={M}")
    return Game("synthetic", M, rm, batch, reference, "closed form")


def review_continuations(
    task: ImdbSentimentTask, M: int, n: int
) -> tuple[list[list[int]], list[list[int]]]:
    """The first n eval prompts whose review goes on for M more tokens, and those M tokens."""
    reviews = task._reviews[: task.eval_prompts]  # the reviews `prompts("eval")` opens
    prompts, responses = [], []
    for prompt, review in zip(task.prompts("eval"), reviews, strict=False):
        ids = task.tokenizer(review.text, add_special_tokens=False)["input_ids"]
        assert prompt[1:] == ids[: task.prompt_tokens], "eval prompts and reviews out of step"
        response = ids[task.prompt_tokens : task.prompt_tokens + M]
        if len(response) == M:
            prompts.append(prompt)
            responses.append(response)
        if len(prompts) == n:
            break
    return prompts, responses


class ReferenceCache:
    """RM references on disk, one entry per response: they cost most of a first run."""

    def __init__(self, path: Path, rm: HFRewardModel) -> None:
        self.path = path
        self.entries: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
        digest = hashlib.sha256()
        for name, tensor in sorted(rm.model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        self.rm_hash = digest.hexdigest()[:16]

    def key(self, prompt: list[int], response: list[int], kind: str) -> str:
        text = json.dumps([self.rm_hash, prompt, response, kind])
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    def get(self, key: str) -> dict[str, Any] | None:
        return self.entries.get(key)

    def put(self, key: str, entry: dict[str, Any]) -> None:
        """Add an entry and write the file, merged with what other runs wrote meanwhile."""
        self.entries[key] = entry
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock.tmp"), "w") as lock:  # *.tmp: git-ignored
            fcntl.flock(lock, fcntl.LOCK_EX)
            on_disk = json.loads(self.path.read_text()) if self.path.exists() else {}
            self.entries = {**on_disk, **self.entries}
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.entries, indent=0))
            tmp.replace(self.path)


def sampled_reference(
    rm: RewardModel, batch: RolloutBatch, permutations: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent halves of a long antithetic run of our sampler: (2, n, M). Seeds
    1_000_001 and 1_000_002 are used nowhere else."""
    halves = []
    for seed in (1_000_001, 1_000_002):
        attributor = ShapleyAttributor(
            RewardScorer(rm),
            max_exact_players=1,
            permutations=permutations // 2,
            estimator="permutation",
            seed=seed,
        )
        halves.append(attributor.attribute(batch))
    return halves[0], halves[1]


def one_response(batch: RolloutBatch, i: int) -> RolloutBatch:
    return RolloutBatch(
        batch.prompt_ids[i : i + 1],
        batch.prompt_mask[i : i + 1],
        batch.response_ids[i : i + 1],
        batch.response_mask[i : i + 1],
        batch.scores[i : i + 1],
    )


def imdb_game(
    task: ImdbSentimentTask,
    rm: HFRewardModel,
    M: int,
    n: int,
    cache: ReferenceCache,
    permutations: int,
) -> Game:
    prompts, responses = review_continuations(task, M, n)
    batch = scored_batch(rm, prompts, responses)
    kind = "exact" if M <= EXACT_LIMIT else f"antithetic x{permutations}"
    keys = [cache.key(p, r, kind) for p, r in zip(prompts, responses, strict=True)]
    for i, key in enumerate(keys):  # one response at a time: a killed run keeps what it did
        if cache.get(key) is not None:
            continue
        log.info("imdb-rm M=%d: computing the %s reference of response %d", M, kind, i)
        started = time.perf_counter()
        if M <= EXACT_LIMIT:
            phi = enumerated_shapley(rm, one_response(batch, i))[0]
            a, b = phi, phi
        else:
            a, b = (h[0] for h in sampled_reference(rm, one_response(batch, i), permutations))
        seconds = time.perf_counter() - started
        cache.put(key, {"a": a.tolist(), "b": b.tolist(), "seconds": seconds})
    a = torch.tensor([cache.entries[k]["a"] for k in keys])  # (n, M)
    b = torch.tensor([cache.entries[k]["b"] for k in keys])
    reference = (a + b) / 2
    # Each half has about sqrt(2) times the error of the mean: |a - b| / 2 estimates the mean's.
    error = float(((a - b).norm(dim=1) / 2 / reference.norm(dim=1)).mean())
    return Game("imdb-rm", M, rm, batch, reference, kind, error)


class MemoRewardModel:
    """An RM that remembers the score of every row it has seen (sweep only: see the module
    docstring). The scorer in front of it counts rows as it always does."""

    def __init__(self, rm: RewardModel, memo: dict[bytes, float] | None = None) -> None:
        self.rm = rm
        self.tokenizer, self.mask_token_id, self.causal = rm.tokenizer, rm.mask_token_id, rm.causal
        self.memo: dict[bytes, float] = {} if memo is None else memo
        self.forward_seconds = 0.0
        """Time in the real RM's forwards (the memo's own bookkeeping left out)."""

    def scores(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        lengths = mask.sum(1).tolist()
        rows = ids.to(torch.int32).numpy()
        keys = [rows[j, :n].tobytes() for j, n in enumerate(lengths)]
        todo = [j for j, key in enumerate(keys) if key not in self.memo]
        if todo:
            width = max(lengths[j] for j in todo)
            started = time.perf_counter()
            new = self.rm.scores(ids[todo, :width], mask[todo, :width]).float()
            self.forward_seconds += time.perf_counter() - started
            self.memo.update(zip([keys[j] for j in todo], new.tolist(), strict=True))
        return torch.tensor([self.memo[key] for key in keys])

    def prefix_scores(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.rm.prefix_scores(ids, mask)

    def attentions(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.rm.attentions(ids, mask)


# ---------------------------------------------------------------------------------------------
# Methods: (scorer, batch, row budget, seed) -> credits (n, M) in reward units

Method = Callable[[RewardScorer, RolloutBatch, int, int], torch.Tensor]


def our_permutations(budget: int, M: int) -> int:
    """Antithetic permutations that fit a row budget: each costs M - 1 new rows (v(N) is the
    batch's score, v(empty) is shared by all of them), plus v(empty) once."""
    return 2 * max(1, (budget - 1) // (2 * (M - 1)))


def run_ours(scorer: RewardScorer, batch: RolloutBatch, budget: int, seed: int) -> torch.Tensor:
    M = batch.response_ids.shape[1]
    attributor = ShapleyAttributor(
        scorer,
        max_exact_players=1,
        permutations=our_permutations(budget, M),
        estimator="permutation",  # what attribution.md measured
        seed=seed,
    )
    return attributor.attribute(batch)  # all responses in one scorer request


def per_response(explain: Callable[[TokenGame, int, int, int], np.ndarray]) -> Method:
    """A library explainer, run on one response at a time as the libraries work."""

    def run(scorer: RewardScorer, batch: RolloutBatch, budget: int, seed: int) -> torch.Tensor:
        M = batch.response_ids.shape[1]
        out = torch.zeros(batch.size, M)
        for i in range(batch.size):
            game = TokenGame(scorer, batch, i)
            with numpy_seed(seed * 1009 + i):
                out[i] = torch.from_numpy(explain(game, M, budget, seed * 1009 + i)).float()
        return out

    return run


def shap_permutation(game: TokenGame, M: int, budget: int, seed: int) -> np.ndarray:
    import shap

    explainer = shap.explainers.Permutation(game, KeepMasker(M, None), seed=seed)
    out = explainer(np.ones((1, M)), max_evals=budget, batch_size=budget, silent=True)
    return np.asarray(out.values, dtype=np.float64).reshape(M)


def shap_partition(game: TokenGame, M: int, budget: int, seed: int) -> np.ndarray:
    import shap

    explainer = shap.explainers.Partition(game, KeepMasker(M, span_tree(M)))
    out = explainer(np.ones((1, M)), max_evals=budget, batch_size=budget, silent=True)
    return np.asarray(out.values, dtype=np.float64).reshape(M)


def shap_kernel(game: TokenGame, M: int, budget: int, seed: int) -> np.ndarray:
    import shap

    explainer = shap.KernelExplainer(game, np.zeros((1, M)))  # background: every token masked
    # v(empty) (the background) and v(N) come on top of nsamples.
    phi = explainer.shap_values(np.ones((1, M)), nsamples=budget - 2, l1_reg=False, silent=True)
    return np.asarray(phi, dtype=np.float64).reshape(M)


def lime_text(game: TokenGame, M: int, budget: int, seed: int) -> np.ndarray:
    """LIME's coefficients, made to sum to v(N) - v(empty) as the `lime` method does."""
    from lime.lime_text import LimeTextExplainer

    explainer = LimeTextExplainer(
        feature_selection="none",
        split_expression=" ",
        bow=False,
        mask_string="_",
        random_state=seed,
    )

    def classifier(texts: list[str]) -> np.ndarray:
        keep = np.array([[w != "_" for w in s.split(" ")] for s in texts])
        return game(keep)[:, None]  # (N, 1): one "class", the reward

    text = " ".join(f"t{k}" for k in range(M))
    explanation = explainer.explain_instance(
        text, classifier, labels=(0,), num_features=M, num_samples=budget
    )
    coef = torch.zeros(1, M)
    for k, weight in explanation.local_exp[0]:
        coef[0, k] = float(weight)
    full, empty = game(np.ones((1, M))), game(np.zeros((1, M)))
    target = torch.tensor([float(full[0] - empty[0])])
    conserved, _ = conserve(coef, target, torch.ones(1, M))
    return conserved[0].double().numpy()


RUNNERS: dict[str, Method] = {
    "shapley": run_ours,
    "shap-permutation": per_response(shap_permutation),
    "shap-partition": per_response(shap_partition),
    "shap-kernel": per_response(shap_kernel),
    "lime": per_response(lime_text),
}


# ---------------------------------------------------------------------------------------------
# 1. Error vs rows


def relative_errors(credits: torch.Tensor, reference: torch.Tensor) -> list[float]:
    return ((credits - reference).norm(dim=1) / reference.norm(dim=1)).tolist()


def sweep(game: Game, seeds: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every method at every budget and seed on one game: errors, and (imdb-rm) times.

    The RM rows of a game go through one memo, so a row asked for again is not recomputed.
    On imdb-rm the runs at 10(2M+1) rows come first and are timed: each gets a memo of its
    own, empty, so every row it asks for is a real forward (the rows join the shared memo
    afterwards). Time outside the RM = wall time minus time in the RM's forwards; the
    median over seeds is reported, as other work on a shared machine makes single runs
    noisy.
    """
    memo: dict[bytes, float] = {}
    errors_out, times_out = [], []
    timed_budget = 10 * (2 * game.M + 1)
    for method in METHODS:
        order = sorted(budgets(game.M), key=lambda b: b != timed_budget)  # the timed run first
        for budget in order:
            errors, rows, times = [], [], []
            for seed in range(seeds):
                timed = game.name == "imdb-rm" and budget == timed_budget
                rm = MemoRewardModel(game.rm, None if timed else memo)
                scorer = RewardScorer(rm)
                started = time.perf_counter()
                credits = RUNNERS[method](scorer, game.batch, budget, seed)
                wall = time.perf_counter() - started
                errors += relative_errors(credits, game.reference)
                rows.append(scorer.stats.rows / game.batch.size)
                if timed:
                    memo.update(rm.memo)
                    times.append((wall, rm.forward_seconds))
            if times:
                times_out.append(timing(game, method, budget, times))
            errors_out.append(
                {
                    "game": game.name,
                    "M": game.M,
                    "method": method,
                    "budget": budget,
                    "rows": float(np.mean(rows)),
                    "error": float(np.mean(errors)),
                    "error_sem": float(np.std(errors, ddof=1) / np.sqrt(len(errors))),
                    "runs": len(errors),
                }
            )
            r = errors_out[-1]
            log.info(
                "%s M=%d %s budget=%d: rows %.0f error %.4f",
                *(game.name, game.M, method, budget, r["rows"], r["error"]),
            )
    return errors_out, times_out


# ---------------------------------------------------------------------------------------------
# 2. Time outside the RM


def timing(
    game: Game, method: str, budget: int, times: list[tuple[float, float]]
) -> dict[str, Any]:
    """Medians over seeds of (wall seconds, seconds in RM forwards) of one method's runs."""
    walls = [wall for wall, _ in times]
    shares = [1 - forward / wall for wall, forward in times]
    out = {
        "game": game.name,
        "M": game.M,
        "method": method,
        "budget": budget,
        "ms_per_response": 1000 * float(np.median(walls)) / game.batch.size,
        "outside_share": float(np.median(shares)),
        "outside_shares": shares,
    }
    log.info(
        "time %s M=%d %s: %.0f ms/response, outside the RM %.1f%%",
        *(game.name, game.M, method, out["ms_per_response"], 100 * out["outside_share"]),
    )
    return out


# ---------------------------------------------------------------------------------------------
# 3. Every registered method at its defaults


def policy_batch(
    task: ImdbSentimentTask, rm: HFRewardModel, size: int, length: int
) -> RolloutBatch:
    """`size` eval prompts, each with a `length`-token sample of the policy (no early stop)."""
    policy = task.load_policy()
    prompts = task.prompts("eval")[:size]  # all bos + prompt_tokens long: no padding needed
    torch.manual_seed(0)
    with torch.no_grad():
        out = policy.generate(
            torch.tensor(prompts),
            attention_mask=torch.ones(len(prompts), len(prompts[0]), dtype=torch.long),
            do_sample=True,
            top_k=0,
            max_new_tokens=length,
            min_new_tokens=length,
            pad_token_id=task.tokenizer.pad_token_id,
        )
    responses = out[:, len(prompts[0]) :].tolist()
    return scored_batch(rm, prompts, responses)


def defaults(
    task: ImdbSentimentTask, rm: HFRewardModel, size: int, length: int
) -> list[dict[str, Any]]:
    batch = policy_batch(task, rm, size, length)
    out = []
    for name in ATTRIBUTORS:
        scorer = RewardScorer(rm)
        attributor = make_attributor(name, scorer)
        attributor.attribute(batch)
        wall = attributor.seconds
        out.append(
            {
                "method": name,
                "rows_per_response": scorer.stats.rows / batch.size,
                "ms_per_response": 1000 * wall / batch.size,
                "outside_share": 1 - scorer.stats.model_seconds / wall if wall > 0 else 0.0,
            }
        )
        log.info("defaults %s: %s", name, out[-1])
    return out


# ---------------------------------------------------------------------------------------------
# Reports


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows] + [""]


def markdown(results: dict[str, Any]) -> str:
    s = results["settings"]
    lines = [
        "# Attribution benchmark",
        "",
        f"`{results['command']}` on {results['machine']}; {results['wall_minutes']:.1f} min; "
        f"load average {results['load_average']} at the start.",
        "",
        "## Relative L2 error vs RM rows per response",
        "",
        f"Mean of ||phi - phi_ref|| / ||phi_ref|| over {s['responses']} responses x "
        f"{s['seeds']} seeds; in brackets the RM rows per response actually used. Goal for "
        "`shapley`: <= 5 % at 10(2M+1) rows for M <= 16, and no worse than shap-permutation.",
        "",
    ]
    lines += table(
        ["game", "M", "reference", "its estimated error"],
        [[g, str(m), kind, f"{err:.2%}"] for g, m, kind, err in results["references"]],
    )
    for game in ("synthetic", "imdb-rm"):
        for M in sorted({r["M"] for r in results["sweep"] if r["game"] == game}):
            cell = {
                (r["method"], r["budget"]): f"{r['error']:.2%} ({r['rows']:.0f})"
                for r in results["sweep"]
                if r["game"] == game and r["M"] == M
            }
            lines += [f"### {game}, M = {M}", ""]
            lines += table(
                ["method", *(f"budget {b}" for b in budgets(M))],
                [[m, *(cell[m, b] for b in budgets(M))] for m in METHODS],
            )
    Ms = sorted({r["M"] for r in results["time"]})
    share = {(r["method"], r["M"]): r for r in results["time"]}
    lines += [
        "## Time outside the RM forward",
        "",
        "imdb-rm, each method at 10(2M+1) rows, every row a real forward: share of the "
        "attribution's wall time spent outside the RM, and ms per response; medians over "
        "seeds. Goal for `shapley`: <= 20 %.",
        "",
    ]
    lines += table(
        ["method", *(f"M = {M}" for M in Ms)],
        [
            [
                m,
                *(
                    f"{share[m, M]['outside_share']:.0%} ({share[m, M]['ms_per_response']:.0f} ms)"
                    for M in Ms
                ),
            ]
            for m in METHODS
        ],
    )
    d = results["defaults_setting"]
    lines += [
        f"## Registered methods at their defaults (imdb-sentiment, batch {d['batch']}, "
        f"{d['response_tokens']} policy-sampled response tokens, {d['threads']} torch threads)",
        "",
    ]
    lines += table(
        ["method", "RM rows / response", "ms / response", "outside the RM"],
        [
            [
                r["method"],
                f"{r['rows_per_response']:.1f}",
                f"{r['ms_per_response']:.1f}",
                f"{r['outside_share']:.0%}" if r["rows_per_response"] else "no RM",
            ]
            for r in results["defaults"]
        ],
    )
    return "\n".join(lines)


FLOOR = 1e-4
"""Errors below this (exact results, 0 up to rounding) are drawn on it: the axis is log."""


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    games = ("synthetic", "imdb-rm")
    Ms = sorted({r["M"] for r in results["sweep"]})
    fig, axes = plt.subplots(
        len(games), len(Ms), figsize=(3.4 * len(Ms), 6.4), squeeze=False, sharey=True
    )
    for row, game in enumerate(games):
        for col, M in enumerate(Ms):
            ax = axes[row][col]
            for method in METHODS:
                points = sorted(
                    (r["rows"], max(r["error"], FLOOR))
                    for r in results["sweep"]
                    if (r["game"], r["M"], r["method"]) == (game, M, method)
                )
                if points:
                    ax.plot(*zip(*points, strict=True), marker="o", ms=3, label=method)
            ax.axhline(0.05, color="grey", lw=0.8, ls="--")  # the 5 % goal
            ax.axvline(10 * (2 * M + 1), color="grey", lw=0.8, ls=":")  # at 10(2M+1) rows
            ax.set(xscale="log", yscale="log", ylim=(FLOOR / 2, 2), title=f"{game}, M = {M}")
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
            if row == len(games) - 1:
                ax.set_xlabel("RM rows per response")
        axes[row][0].set_ylabel(f"relative L2 error (floor {FLOOR:g})")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Error vs RM rows; dashed: 5 %, dotted: 10(2M+1) rows", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ---------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="M = 8, 12; 2 responses x 2 seeds")
    parser.add_argument(
        "--home",
        type=Path,
        default=Path(os.environ.get("SHAPETUNE_HOME", Path.home() / ".shapetune")),
    )
    parser.add_argument("--size", default="default", help="built-in task size (default: default)")
    parser.add_argument("--players", type=int, nargs="+", default=[8, 12, 16, 24, 48])
    parser.add_argument("--responses", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--reference-permutations",
        type=int,
        default=None,
        help="of the sampled RM references (default: 2000 at M <= 24, 1000 above)",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads, parts 1 and 2")
    parser.add_argument("--defaults-threads", type=int, default=2, help="torch threads, part 3")
    parser.add_argument(
        "--references-only", action="store_true", help="fill the RM reference cache and stop"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.quick:
        args.players, args.responses, args.seeds = [8, 12], 2, 2
    # INFO for this script only: shap logs every KernelExplainer call at INFO.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    log.setLevel(logging.INFO)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    load_average = ", ".join(f"{x:.1f}" for x in os.getloadavg())

    task = ImdbSentimentTask(args.home, size=args.size)
    rm = task.load_reward_model()
    cache = ReferenceCache(args.out / "attribution-reference.json", rm)
    if args.references_only:
        for M in args.players:
            imdb_game(task, rm, M, args.responses, cache, reference_permutations(M, args))
        return
    results: dict[str, Any] = {"sweep": [], "time": [], "references": []}
    for M in args.players:
        for game in (
            synthetic_game(M, args.responses),
            imdb_game(task, rm, M, args.responses, cache, reference_permutations(M, args)),
        ):
            results["references"].append((game.name, M, game.reference_kind, game.reference_error))
            errors, times = sweep(game, args.seeds)
            results["sweep"] += errors
            results["time"] += times
    torch.set_num_threads(args.defaults_threads)
    results["defaults_setting"] = {
        "batch": 32,
        "response_tokens": 24,
        "threads": args.defaults_threads,
    }
    results["defaults"] = defaults(task, rm, 32, 24)

    results["command"] = " ".join([".venv/bin/python bench/attribution_bench.py", *sys.argv[1:]])
    results["machine"] = machine()
    results["settings"] = {k: str(v) for k, v in vars(args).items()}
    results["load_average"] = load_average
    results["wall_minutes"] = (time.perf_counter() - started) / 60
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "-quick" if args.quick else ""
    (args.out / f"attribution{suffix}.json").write_text(json.dumps(results, indent=1))
    (args.out / f"attribution{suffix}.md").write_text(markdown(results))
    plot(results, args.out / f"attribution-error-vs-rows{suffix}.png")


if __name__ == "__main__":
    main()
