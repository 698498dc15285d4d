"""How each stage of the imdb-sentiment task is built (`prepare.py` decides whether to).

Importing this module imports torch and transformers; `prepare` does so only when a stage
must be built, so that a fully cached `shapetune prepare` returns in about a second.
"""

from __future__ import annotations

import json
from dataclasses import replace
from functools import cached_property, partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from transformers import (
    AutoModelForCausalLM,
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
    PreTrainedTokenizerFast,
)

from trainers.tasks import cache
from trainers.tasks.gold import vader_compound
from trainers.tasks.imdb import build
from trainers.tasks.imdb.config import PrepareConfig
from trainers.tasks.imdb.data import (
    Example,
    Splits,
    load_corpus,
    read_jsonl,
    split_corpus,
    write_jsonl,
)

if TYPE_CHECKING:
    from trainers.tasks.imdb.prepare import OnProgress


def build_stages(
    root: Path,
    config: PrepareConfig,
    keys: dict[str, dict[str, Any]],
    threads: int,
    force: bool,
    on_progress: OnProgress,
) -> dict[str, cache.StageRecord]:
    """Build every stage that is not cached and valid, in order, each from the one before."""
    saved = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    # CPU kernels are deterministic for a fixed thread count; make any exception loud.
    torch.use_deterministic_algorithms(True)
    root.mkdir(parents=True, exist_ok=True)
    builder = Builder(config, root, on_progress)
    steps = {
        "data": builder.data,
        "tokenizer": builder.tokenizer_stage,
        "policy": builder.policy,
        "reward_model": builder.reward_model,
        "report": builder.report,
    }
    records: dict[str, cache.StageRecord] = {}
    try:
        for name, step in steps.items():
            records[name] = cache.cached_stage(root, name, keys[name], step, force=force)
            if not records[name].built:
                on_progress(name, 1, 1, cached=True)
        return records
    finally:
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1])


class Builder:
    """The build step of each stage. Stages are built in order and each is in place under
    `root` once built, so a step reads its inputs from there; inputs are computed lazily,
    only if a stage that needs them is rebuilt. Each step reports its progress from 0 up to
    its total (see `OnProgress`)."""

    def __init__(self, config: PrepareConfig, root: Path, on_progress: OnProgress) -> None:
        self.config = config
        self.on_progress = on_progress
        self.size = config.model
        self.data_dir = root / "data"
        self.tokenizer_dir = root / "tokenizer"
        self.policy_dir = root / "policy"
        self.rm_dir = root / "reward_model"

    @cached_property
    def tokenizer(self) -> PreTrainedTokenizerFast:
        return PreTrainedTokenizerFast.from_pretrained(self.tokenizer_dir)

    @cached_property
    def splits(self) -> Splits:  # loading the CSV costs ~2 s: only when a stage needs it
        c = self.config
        splits = split_corpus(load_corpus(), c.seed, c.heldout, c.validation)
        if self.size.train_docs:  # a subset that keeps both sources: the tiny size, for tests
            splits = replace(
                splits, train=splits.train[:: len(splits.train) // self.size.train_docs]
            )
        return splits

    @cached_property
    def train_ids(self) -> list[list[int]]:
        return build.encode(self.tokenizer, [e.text for e in self.splits.train])

    def data(self, out: Path) -> dict[str, Any]:
        self.on_progress("data", 0, 1)
        write_jsonl(out / "heldout.jsonl", self.splits.heldout)
        write_jsonl(out / "validation.jsonl", self.splits.validation)
        self.on_progress("data", 1, 1)
        return {
            "train": len(self.splits.train),
            "validation": len(self.splits.validation),
            "heldout": len(self.splits.heldout),
        }

    def tokenizer_stage(self, out: Path) -> dict[str, Any]:
        self.on_progress("tokenizer", 0, 1)
        texts = [e.text for e in self.splits.train]
        build.train_tokenizer(texts, self.size.vocab_size).save_pretrained(out)
        self.on_progress("tokenizer", 1, 1)
        return {"vocab_size": self.size.vocab_size, "docs": len(texts)}

    def policy(self, out: Path) -> dict[str, Any]:
        # Reported before the training texts are encoded: that alone takes seconds.
        self.on_progress("policy", 0, self.size.pretrain_steps)
        model, info = build.pretrain_policy(
            self.size,
            self.tokenizer,
            self.train_ids,
            self.config.seed,
            on_step=partial(self.on_progress, "policy"),
        )
        model.save_pretrained(out)
        self.tokenizer.save_pretrained(out)
        return info

    def reward_model(self, out: Path) -> dict[str, Any]:
        self.on_progress("reward_model", 0, self.size.rm_steps)
        train = self.splits.train
        pairs = [(ids, e.label) for ids, e in zip(self.train_ids, train, strict=True)]
        reviews = [p for p, e in zip(pairs, train, strict=True) if e.source == "imdb"]
        sentences = [p for p, e in zip(pairs, train, strict=True) if e.source != "imdb"]
        model, info = build.train_reward_model(
            self.size,
            self.tokenizer,
            self.policy_dir,
            reviews,
            sentences,
            self.config.seed,
            self.config.rm_mask_rows,
            self.config.rm_max_mask_rate,
            on_step=partial(self.on_progress, "reward_model"),
        )
        model.save_pretrained(out)
        self.tokenizer.save_pretrained(out)
        return info

    def report(self, out: Path) -> dict[str, Any]:
        self.on_progress("report", 0, 1)
        heldout = read_jsonl(self.data_dir / "heldout.jsonl")
        reviews = [e for e in heldout if e.source == "imdb"][: self.size.eval_reviews or None]
        sentences = [e for e in heldout if e.source != "imdb"][: self.size.eval_sentences or None]
        info = evaluate(
            self.policy_dir, self.rm_dir, self.tokenizer, reviews, sentences, self.config.seed
        )
        (out / "report.json").write_text(json.dumps(info, indent=2))
        self.on_progress("report", 1, 1)
        return info


def evaluate(
    policy_dir: Path,
    rm_dir: Path,
    tokenizer: PreTrainedTokenizerFast,
    reviews: list[Example],
    sentences: list[Example],
    seed: int,
) -> dict[str, Any]:
    """Held-out quality of what was built: the numbers a user should look at first."""
    policy = AutoModelForCausalLM.from_pretrained(policy_dir).eval()
    rm = GPT2ForSequenceClassification.from_pretrained(rm_dir).eval()
    bos, pad = tokenizer.bos_token_id, tokenizer.pad_token_id
    n_pos = policy.config.n_positions
    review_ids = build.encode(tokenizer, [e.text for e in reviews])
    sentence_ids = build.encode(tokenizer, [e.text for e in sentences])
    review_scores = build.rm_scores(rm, review_ids, bos, pad, n_pos)
    sentence_scores = build.rm_scores(rm, sentence_ids, bos, pad, n_pos)
    review_labels = np.array([e.label for e in reviews])
    sentence_labels = np.array([e.label for e in sentences])
    texts = [e.text for e in reviews + sentences]
    vader = vader_compound(texts)
    rm_all = np.concatenate([review_scores, sentence_scores])
    decided = vader != 0.0  # VADER gives exactly 0 to texts without sentiment words
    return {
        "policy_perplexity_128": build.perplexity(policy, review_ids, bos, 128),
        "rm_accuracy_reviews": float(((review_scores > 0) == review_labels).mean()),
        "rm_accuracy_sentences": float(((sentence_scores > 0) == sentence_labels).mean()),
        "reviews_fitting_context": float(np.mean([len(r) < n_pos for r in review_ids])),
        "rm_vader_sign_agreement": float(((rm_all > 0) == (vader > 0))[decided].mean()),
        "vader_accuracy_reviews": float(((vader[: len(reviews)] > 0) == review_labels).mean()),
        "eval_counts": {"reviews": len(reviews), "sentences": len(sentences)},
        "samples": sample_continuations(policy, rm, tokenizer, reviews[:3], seed),
    }


@torch.no_grad()
def sample_continuations(
    policy: GPT2LMHeadModel,
    rm: GPT2ForSequenceClassification,
    tokenizer: PreTrainedTokenizerFast,
    reviews: list[Example],
    seed: int,
    prompt_tokens: int = 8,
    new_tokens: int = 24,
) -> list[dict[str, Any]]:
    torch.manual_seed(seed)
    out = []
    for review in reviews:
        prompt = [
            tokenizer.bos_token_id,
            *build.encode(tokenizer, [review.text])[0][:prompt_tokens],
        ]
        ids = policy.generate(
            torch.tensor([prompt]),
            do_sample=True,
            top_k=0,
            top_p=1.0,
            max_new_tokens=new_tokens,
            pad_token_id=tokenizer.pad_token_id,
        )
        full = str(tokenizer.decode(ids[0, 1:]))
        score = build.rm_scores(
            rm,
            [ids[0, 1:].tolist()],
            tokenizer.bos_token_id,
            tokenizer.pad_token_id,
            policy.config.n_positions,
        )
        out.append(
            {
                "prompt": str(tokenizer.decode(prompt[1:])),
                "continuation": str(tokenizer.decode(ids[0, len(prompt) :])),
                "rm_score": float(score[0]),
                "vader": float(vader_compound([full])[0]),
            }
        )
    return out
