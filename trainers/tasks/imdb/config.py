"""What `shapetune prepare` builds for the imdb-sentiment task, as typed values."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class ModelSize:
    """One size of the built-in models. Step counts, not wall time, so builds are reproducible."""

    vocab_size: int
    """BPE vocabulary, special tokens included."""
    n_layer: int
    n_embd: int
    n_head: int
    n_positions: int
    """Context of policy and RM: a full review (most fit) or prompt + 128 response tokens."""
    train_docs: int
    """Training documents the tokenizer, policy and RM see (0 = all)."""
    pretrain_steps: int
    pretrain_batch: int
    pretrain_block: int
    pretrain_lr: float
    rm_steps: int
    rm_batch: int
    """Texts per RM step; fewer than ~64 and the RM stalls at chance for hundreds of steps."""
    rm_block: int
    """Longest review window the RM trains on."""
    rm_lr: float
    eval_reviews: int
    """Held-out reviews and sentences used to measure perplexity and RM accuracy (0 = all)."""
    eval_sentences: int
    rm_short_share: float = 0.5
    """Share of RM rows that are short texts (a sentence or a review's opening: the shape of
    prompt + continuation the RM judges in PPO); the rest are long review windows. Measured
    on the default size: 0.35 gave 0.848 / 0.698 (reviews / sentences accuracy), 0.5 with
    `rm_sentence_share` 0.75 gave 0.868 / 0.712."""
    rm_sentence_share: float = 0.75
    """Share of the short rows that are Rotten Tomatoes sentences (the rest: review openings)."""


SIZES: dict[str, ModelSize] = {
    # Sized for the prepare budget (<= 10 min on 2 CPU cores): with ~2e13 FLOPs to spend, a
    # narrow model that sees more text beats a wide one that sees little (measured: 4x256
    # with an 8k vocab trains at 3.3k tokens/s, 4x128 with 4k at 7.9k, 11k for the RM).
    "default": ModelSize(
        vocab_size=4096,
        n_layer=4,
        n_embd=128,
        n_head=4,
        n_positions=512,
        train_docs=0,
        pretrain_steps=440,
        pretrain_batch=16,
        pretrain_block=256,
        pretrain_lr=3e-3,
        rm_steps=360,
        rm_batch=64,
        rm_block=256,
        rm_lr=1e-3,
        eval_reviews=1000,
        eval_sentences=1000,
    ),
    # Same pipeline, seconds instead of minutes: for tests.
    "tiny": ModelSize(
        vocab_size=600,
        n_layer=2,
        n_embd=32,
        n_head=2,
        n_positions=160,
        train_docs=800,
        pretrain_steps=12,
        pretrain_batch=8,
        pretrain_block=64,
        pretrain_lr=3e-3,
        rm_steps=12,
        rm_batch=16,
        rm_block=64,
        rm_lr=1e-3,
        eval_reviews=64,
        eval_sentences=64,
    ),
}

SPECIAL_TOKENS = {"eos": "<|endoftext|>", "pad": "<|pad|>", "mask": "<|mask|>"}


@dataclass(frozen=True)
class PrepareConfig:
    size: str = "default"
    seed: int = 0
    heldout: dict[str, int] = field(default_factory=lambda: {"imdb": 2500, "rotten_tomatoes": 1000})
    validation: dict[str, int] = field(
        default_factory=lambda: {"imdb": 500, "rotten_tomatoes": 300}
    )
    rm_mask_rows: float = 0.4
    """Share of RM training rows with random token masking (so masked coalitions are in
    distribution for Shapley, SHAP and LIME)."""
    rm_max_mask_rate: float = 0.6
    torch_threads: int = 0
    """0 = all cores. Part of the key: matmul reductions differ with the thread count."""

    def __post_init__(self) -> None:
        if self.size not in SIZES:
            raise ValueError(f"unknown size {self.size!r}; choose one of {sorted(SIZES)}")
        if not 0.0 <= self.rm_mask_rows <= 1.0 or not 0.0 <= self.rm_max_mask_rate < 1.0:
            raise ValueError("rm_mask_rows must be in [0, 1] and rm_max_mask_rate in [0, 1)")

    @property
    def model(self) -> ModelSize:
        return SIZES[self.size]

    def with_(self, **changes: Any) -> PrepareConfig:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "model": asdict(self.model)}
