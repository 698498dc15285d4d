"""`shapetune prepare`: build the imdb-sentiment task once and cache it.

Stages, each cached and validated on its own (see `trainers.tasks.cache`):

    data         held-out and validation texts (the split is a pure function of the seed)
    tokenizer    byte-level BPE fitted on the training texts
    policy       GPT-2 pretrained on review text: the "SFT" model
    reward_model the policy + a scalar head, fine-tuned on the sentiment labels
    report       held-out perplexity, RM accuracy, agreement with VADER, sample continuations
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

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
from trainers.tasks.imdb.data import Example, Splits, corpus_sha256, load_corpus, split_corpus

logger = logging.getLogger(__name__)

TASK_NAME = "imdb-sentiment"
STAGES = ("data", "tokenizer", "policy", "reward_model", "report")


@dataclass(frozen=True)
class Prepared:
    root: Path
    stages: dict[str, cache.StageRecord]
    seconds: float

    @property
    def report(self) -> dict[str, Any]:
        return self.stages["report"].info


def task_root(home: Path, config: PrepareConfig) -> Path:
    return home / "tasks" / TASK_NAME / f"{config.size}-seed{config.seed}"


def _write_jsonl(path: Path, examples: list[Example]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for e in examples:
            f.write(json.dumps({"text": e.text, "label": e.label, "source": e.source}) + "\n")


def read_jsonl(path: Path) -> list[Example]:
    with open(path, encoding="utf-8") as f:
        return [Example(**json.loads(line)) for line in f if line.strip()]


def prepare(home: Path, config: PrepareConfig, *, force: bool = False) -> Prepared:
    """Build (or reuse) every stage of the task under `home`; return their records."""
    threads = config.torch_threads or torch.get_num_threads()
    saved = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    # CPU kernels are deterministic for a fixed thread count; make any exception loud.
    torch.use_deterministic_algorithms(True)
    try:
        return _prepare(home, config, threads, force)
    finally:
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1])


def _prepare(home: Path, config: PrepareConfig, threads: int, force: bool) -> Prepared:
    started = time.perf_counter()
    root = task_root(home, config)
    root.mkdir(parents=True, exist_ok=True)
    build = _Builder(config)
    model = config.to_dict()["model"]
    stages: dict[str, cache.StageRecord] = {}

    def stage(
        name: str, key: dict[str, Any], fn: Callable[[Path], dict[str, Any]]
    ) -> cache.StageRecord:
        stages[name] = cache.cached_stage(root, name, key, fn, force=force)
        return stages[name]

    data = stage(
        "data",
        {
            "corpus_sha256": corpus_sha256(),
            "seed": config.seed,
            "heldout": config.heldout,
            "validation": config.validation,
        },
        build.data,
    )
    tok = stage(
        "tokenizer",
        {"data": data.key_hash, "vocab_size": model["vocab_size"], "docs": model["train_docs"]},
        build.tokenizer_stage,
    )
    build.use_tokenizer(tok.path, data.path)
    # Keys name everything that changes the weights: upstream stages, seed, thread count.
    policy = stage(
        "policy",
        {
            "tokenizer": tok.key_hash,
            "seed": config.seed,
            "threads": threads,
            "model": {k: v for k, v in model.items() if not k.startswith("rm_")},
        },
        build.policy,
    )
    build.policy_dir = policy.path
    rm = stage(
        "reward_model",
        {
            "policy": policy.key_hash,
            "seed": config.seed,
            "threads": threads,
            "mask_rows": config.rm_mask_rows,
            "max_mask_rate": config.rm_max_mask_rate,
            "rm": {k: v for k, v in model.items() if k.startswith("rm_")},
        },
        build.reward_model,
    )
    build.rm_dir = rm.path
    stage(
        "report",
        {"reward_model": rm.key_hash, "eval": [model["eval_reviews"], model["eval_sentences"]]},
        build.report,
    )
    return Prepared(root, stages, time.perf_counter() - started)


class _Builder:
    """The build step of each stage; inputs are computed lazily, only if a stage is rebuilt."""

    def __init__(self, config: PrepareConfig) -> None:
        self.config = config
        self.size = config.model
        self.tokenizer: PreTrainedTokenizerFast | None = None
        self.data_dir = self.policy_dir = self.rm_dir = Path()

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
        assert self.tokenizer is not None
        return build.encode(self.tokenizer, [e.text for e in self.splits.train])

    def use_tokenizer(self, tokenizer_dir: Path, data_dir: Path) -> None:
        self.tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
        self.data_dir = data_dir

    def data(self, out: Path) -> dict[str, Any]:
        _write_jsonl(out / "heldout.jsonl", self.splits.heldout)
        _write_jsonl(out / "validation.jsonl", self.splits.validation)
        return {
            "train": len(self.splits.train),
            "validation": len(self.splits.validation),
            "heldout": len(self.splits.heldout),
        }

    def tokenizer_stage(self, out: Path) -> dict[str, Any]:
        texts = [e.text for e in self.splits.train]
        build.train_tokenizer(texts, self.size.vocab_size).save_pretrained(out)
        return {"vocab_size": self.size.vocab_size, "docs": len(texts)}

    def policy(self, out: Path) -> dict[str, Any]:
        assert self.tokenizer is not None
        model, info = build.pretrain_policy(
            self.size, self.tokenizer, self.train_ids, self.config.seed
        )
        model.save_pretrained(out)
        self.tokenizer.save_pretrained(out)
        return info

    def reward_model(self, out: Path) -> dict[str, Any]:
        assert self.tokenizer is not None
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
        )
        model.save_pretrained(out)
        self.tokenizer.save_pretrained(out)
        return info

    def report(self, out: Path) -> dict[str, Any]:
        assert self.tokenizer is not None
        heldout = read_jsonl(self.data_dir / "heldout.jsonl")
        reviews = [e for e in heldout if e.source == "imdb"][: self.size.eval_reviews or None]
        sentences = [e for e in heldout if e.source != "imdb"][: self.size.eval_sentences or None]
        info = evaluate(
            self.policy_dir, self.rm_dir, self.tokenizer, reviews, sentences, self.config.seed
        )
        (out / "report.json").write_text(json.dumps(info, indent=2))
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
        # transformers types generate's self as a protocol GPT2LMHeadModel does not declare.
        ids = policy.generate(  # type: ignore[misc]
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
