"""`shapetune prepare`: build the imdb-sentiment task once and cache it.

Stages, each cached and validated on its own (see `trainers.tasks.cache`):

    data         held-out and validation texts (the split is a pure function of the seed)
    tokenizer    byte-level BPE fitted on the training texts
    policy       GPT-2 pretrained on review text: the "SFT" model
    reward_model the policy + a scalar head, fine-tuned on the sentiment labels
    report       held-out perplexity, RM accuracy, agreement with VADER, sample continuations

`prepare` reports its progress to an `OnProgress` callback, so that the CLI can draw it
without this layer knowing how.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from trainers.tasks import cache
from trainers.tasks.imdb.config import PrepareConfig
from trainers.tasks.imdb.data import corpus_sha256

TASK_NAME = "imdb-sentiment"
STAGES = ("data", "tokenizer", "policy", "reward_model", "report")


class OnProgress(Protocol):
    """Hears how far `prepare` is in `stage`: `done` of `total` steps (training steps for
    the policy and the reward model; 1 for a stage built in one go).

    A stage that is built is reported from `done=0` when it starts up to `done=total` when
    it ends; a stage reused from the cache is reported once, `cached=True` with
    `done == total`.
    """

    def __call__(self, stage: str, done: int, total: int, *, cached: bool = False) -> None: ...


def no_progress(stage: str, done: int, total: int, *, cached: bool = False) -> None:
    """The default `OnProgress`: report nothing."""


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


def default_threads() -> int:
    """The cores this process may use: the thread count a build runs with unless told."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def stage_keys(config: PrepareConfig, threads: int) -> dict[str, dict[str, Any]]:
    """Each stage's key names everything that changes what it holds: its configuration,
    the seed, the thread count (matmul reductions differ with it) and its upstream key."""
    model = config.to_dict()["model"]
    keys: dict[str, dict[str, Any]] = {}
    keys["data"] = {
        "corpus_sha256": corpus_sha256(),
        "seed": config.seed,
        "heldout": config.heldout,
        "validation": config.validation,
    }
    keys["tokenizer"] = {
        "data": cache.key_hash(keys["data"]),
        "vocab_size": model["vocab_size"],
        "docs": model["train_docs"],
    }
    keys["policy"] = {
        "tokenizer": cache.key_hash(keys["tokenizer"]),
        "seed": config.seed,
        "threads": threads,
        "model": {k: v for k, v in model.items() if not k.startswith("rm_")},
    }
    keys["reward_model"] = {
        "policy": cache.key_hash(keys["policy"]),
        "seed": config.seed,
        "threads": threads,
        "mask_rows": config.rm_mask_rows,
        "max_mask_rate": config.rm_max_mask_rate,
        "rm": {k: v for k, v in model.items() if k.startswith("rm_")},
    }
    keys["report"] = {
        "reward_model": cache.key_hash(keys["reward_model"]),
        "eval": [model["eval_reviews"], model["eval_sentences"]],
    }
    return keys


def prepare(
    home: Path,
    config: PrepareConfig,
    *,
    force: bool = False,
    on_progress: OnProgress = no_progress,
) -> Prepared:
    """Build (or reuse) every stage of the task under `home`; return their records.

    When every stage is cached and valid nothing heavier than hashing runs: torch and
    transformers are imported only to build.
    """
    started = time.perf_counter()
    root = task_root(home, config)
    threads = config.torch_threads or default_threads()
    keys = stage_keys(config, threads)
    cached = (
        {} if force else {name: cache.valid_record(root / name, key) for name, key in keys.items()}
    )
    if all(cached.get(name) for name in STAGES):
        stages = {name: record for name, record in cached.items() if record is not None}
        for name in STAGES:
            on_progress(name, 1, 1, cached=True)
        return Prepared(root, stages, time.perf_counter() - started)
    from trainers.tasks.imdb.stages import build_stages

    stages = build_stages(root, config, keys, threads, force, on_progress)
    return Prepared(root, stages, time.perf_counter() - started)
