"""The three trained artefacts of the built-in task: tokenizer, policy, reward model.

Each function is deterministic given its inputs and the seed (CPU, fixed thread count).
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import ByteLevelBPETokenizer
from transformers import (
    GPT2Config,
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
    PreTrainedTokenizerFast,
)

from shaping.reward_model import head_prefix_scores
from trainers.tasks.imdb.config import SPECIAL_TOKENS, ModelSize

logger = logging.getLogger(__name__)

StepReport = Callable[[int, int], None]
"""Called after every training step with (steps done, steps in all)."""


def _no_report(done: int, total: int) -> None:
    return None


# ---------------------------------------------------------------------------- tokenizer


def train_tokenizer(texts: Sequence[str], vocab_size: int) -> PreTrainedTokenizerFast:
    bpe = ByteLevelBPETokenizer(add_prefix_space=False)
    bpe.train_from_iterator(
        texts,
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS.values()),
        show_progress=False,
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        bos_token=SPECIAL_TOKENS["eos"],
        eos_token=SPECIAL_TOKENS["eos"],
        unk_token=SPECIAL_TOKENS["eos"],
        pad_token=SPECIAL_TOKENS["pad"],
        mask_token=SPECIAL_TOKENS["mask"],
        padding_side="right",
        model_max_length=1 << 30,
    )


def encode(tokenizer: PreTrainedTokenizerFast, texts: Sequence[str]) -> list[list[int]]:
    return tokenizer(list(texts), add_special_tokens=False)["input_ids"]


# ---------------------------------------------------------------------------- shared


def gpt2_config(size: ModelSize, tokenizer: PreTrainedTokenizerFast) -> GPT2Config:
    # No dropout: the models see far less than one epoch of data in the prepare budget.
    return GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=size.n_positions,
        n_embd=size.n_embd,
        n_layer=size.n_layer,
        n_head=size.n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _lr_at(step: int, steps: int, peak: float) -> float:
    """Linear warm-up over 5 % of the steps, then cosine decay to 10 % of the peak."""
    warmup = max(1, steps // 20)
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _adamw(model: torch.nn.Module, lr: float, embedding_lr: float) -> torch.optim.AdamW:
    """Weight decay on weight matrices only (nanoGPT's split); token embeddings get their own
    learning rate and no decay."""
    wte = model.get_input_embeddings().weight  # type: ignore[operator]
    matrices: list[torch.nn.Parameter] = []
    rest: list[torch.nn.Parameter] = []
    for name, p in model.named_parameters():
        if p is wte:
            continue
        (matrices if p.dim() >= 2 and "wpe" not in name else rest).append(p)
    groups = [
        {"params": matrices, "weight_decay": 0.1, "lr_scale": 1.0},
        {"params": rest, "weight_decay": 0.0, "lr_scale": 1.0},
        {"params": [wte], "weight_decay": 0.0, "lr_scale": embedding_lr / lr},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"]


def _pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask


# ---------------------------------------------------------------------------- policy


def pretrain_policy(
    size: ModelSize,
    tokenizer: PreTrainedTokenizerFast,
    docs: Sequence[Sequence[int]],
    seed: int,
    on_step: StepReport = _no_report,
) -> tuple[GPT2LMHeadModel, dict[str, Any]]:
    """Next-token pretraining on random windows of the concatenated training documents."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    eos = tokenizer.eos_token_id
    order = rng.permutation(len(docs))
    stream = np.fromiter(
        (t for i in order for t in (eos, *docs[i])), dtype=np.int64
    )  # every document starts with <|endoftext|>, which also serves as BOS
    model = GPT2LMHeadModel(gpt2_config(size, tokenizer))
    optimizer = _adamw(model, size.pretrain_lr, size.pretrain_lr)
    block, started, losses = size.pretrain_block, time.perf_counter(), []
    model.train()
    for step in range(size.pretrain_steps):
        starts = rng.integers(0, len(stream) - block - 1, size.pretrain_batch)
        x = torch.from_numpy(np.stack([stream[s : s + block + 1] for s in starts]))
        logits = model(input_ids=x[:, :-1]).logits  # (B, block, V)
        loss = F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten())
        _set_lr(optimizer, _lr_at(step, size.pretrain_steps, size.pretrain_lr))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        on_step(step + 1, size.pretrain_steps)
        if step % 100 == 0 or step == size.pretrain_steps - 1:
            rate = (step + 1) * size.pretrain_batch * block / (time.perf_counter() - started)
            logger.info(
                "pretrain step %d/%d loss %.3f (%.0f tok/s)",
                step + 1,
                size.pretrain_steps,
                loss.item(),
                rate,
            )
    model.eval()
    tokens = size.pretrain_steps * size.pretrain_batch * block
    return model, {"train_tokens": tokens, "final_train_loss": float(np.mean(losses[-20:]))}


@torch.no_grad()
def perplexity(
    model: GPT2LMHeadModel, docs: Sequence[Sequence[int]], bos: int, block: int
) -> float:
    """Perplexity on the first `block` tokens of each held-out document (BOS prepended)."""
    total, count = 0.0, 0
    for i in range(0, len(docs), 32):
        ids, mask = _pad([[bos, *d[: block - 1]] for d in docs[i : i + 32]], pad_id=bos)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
        nll = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
        total += float((nll * mask[:, 1:]).sum())
        count += int(mask[:, 1:].sum())
    return math.exp(total / count)


# ---------------------------------------------------------------------------- reward model


def _rm_batches(
    size: ModelSize,
    reviews: Sequence[tuple[list[int], int]],
    sentences: Sequence[tuple[list[int], int]],
    rng: np.random.Generator,
) -> Iterator[tuple[list[list[int]], list[int]]]:
    """Batches of many texts: a review's label holds for any window of it, and the gradient
    noise that stalls a small RM falls with the number of texts per batch, not their length.

    `rm_short_share` of the rows are short (a Rotten Tomatoes sentence, or the opening
    12..136 tokens of a review: the prompt + continuation shape the RM judges during PPO);
    the rest are windows of a review, from its start half of the time. Windows grow from 96 tokens to
    `rm_block` over training: early steps, when the RM knows least, are the cheap ones.
    """
    shortest = min(96, size.rm_block)
    for step in itertools.count():
        growth = (size.rm_block - shortest) * step // max(1, size.rm_steps - 1)
        block = min(size.rm_block, shortest + growth)
        rows, labels = [], []
        for _ in range(size.rm_batch):
            if rng.random() < size.rm_short_share:
                if rng.random() < size.rm_sentence_share:
                    ids, label = sentences[int(rng.integers(len(sentences)))]
                else:
                    ids, label = reviews[int(rng.integers(len(reviews)))]
                    ids = ids[: int(rng.integers(12, 137))]
            else:
                ids, label = reviews[int(rng.integers(len(reviews)))]
                start = 0
                if len(ids) > block and rng.random() < 0.5:
                    start = int(rng.integers(0, len(ids) - block))
                ids = ids[start : start + block]
            rows.append(ids[: size.n_positions - 1])
            labels.append(label)
        yield rows, labels


def _mask_tokens(
    rows: list[list[int]], mask_id: int, share: float, max_rate: float, rng: np.random.Generator
) -> list[list[int]]:
    out = []
    for r in rows:
        if rng.random() < share:
            rate = rng.uniform(0.0, max_rate)
            r = [mask_id if rng.random() < rate else t for t in r]
        out.append(r)
    return out


def train_reward_model(
    size: ModelSize,
    tokenizer: PreTrainedTokenizerFast,
    policy_dir: Path,
    reviews: Sequence[tuple[list[int], int]],
    sentences: Sequence[tuple[list[int], int]],
    seed: int,
    mask_share: float,
    max_mask_rate: float,
    on_step: StepReport = _no_report,
) -> tuple[GPT2ForSequenceClassification, dict[str, Any]]:
    """Fine-tune policy + scalar head on the sentiment labels.

    The loss is the logistic loss of the score at *every* position against the label, plus
    once more at the last position. Every prefix is then a calibrated log-odds of a
    positive review given the text so far, which is what RED reads as `r(x, y<=t)`, and
    each forward pass gives T training signals instead of one.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    policy = GPT2LMHeadModel.from_pretrained(policy_dir)
    config = GPT2Config(**{**policy.config.to_dict(), "num_labels": 1})
    model = GPT2ForSequenceClassification(config)  # the score head: N(0, 0.02), seeded
    model.transformer.load_state_dict(policy.transformer.state_dict())
    # Embeddings learn 30x faster: sentiment is lexical, and at the body's rate the RM sat at
    # chance for 100-200 steps (measured: accuracy after 150 steps 0.65 -> 0.77).
    optimizer = _adamw(model, size.rm_lr, 30 * size.rm_lr)
    bos, pad, mask_id = tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.mask_token_id
    batches = _rm_batches(size, reviews, sentences, rng)
    started, seen = time.perf_counter(), 0
    model.train()
    for step in range(size.rm_steps):
        rows, labels = next(batches)
        rows = _mask_tokens(rows, mask_id, mask_share, max_mask_rate, rng)
        ids, attn = _pad([[bos, *r] for r in rows], pad)
        y = torch.tensor(labels, dtype=torch.float32)[:, None].expand_as(ids)
        scores = head_prefix_scores(model, ids, attn)[0]  # (B, T)
        per_token = F.binary_cross_entropy_with_logits(scores, y, reduction="none")
        valid = attn.float()
        valid[:, 0] = 0.0  # the BOS position has seen no text
        last = attn.sum(1) - 1
        loss = (per_token * valid).sum() / valid.sum() + per_token[
            torch.arange(len(rows)), last
        ].mean()
        _set_lr(optimizer, _lr_at(step, size.rm_steps, size.rm_lr))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        seen += int(attn.sum())
        on_step(step + 1, size.rm_steps)
        if step % 100 == 0 or step == size.rm_steps - 1:
            rate = seen / (time.perf_counter() - started)
            logger.info(
                "reward model step %d/%d loss %.3f (%.0f tok/s)",
                step + 1,
                size.rm_steps,
                loss.item(),
                rate,
            )
    model.eval()
    return model, {"train_tokens": seen}


@torch.no_grad()
def rm_scores(
    model: GPT2ForSequenceClassification,
    docs: Sequence[Sequence[int]],
    bos: int,
    pad: int,
    max_tokens: int,
) -> np.ndarray:
    """The RM's score of each document (BOS prepended, truncated to `max_tokens`)."""
    out: list[tuple[int, float]] = []
    order = sorted(range(len(docs)), key=lambda i: len(docs[i]))
    for i in range(0, len(order), 32):
        chunk = order[i : i + 32]
        ids, mask = _pad([[bos, *docs[j][: max_tokens - 1]] for j in chunk], pad)
        scores = head_prefix_scores(model, ids, mask)[0][torch.arange(len(chunk)), mask.sum(1) - 1]
        out.extend(zip(chunk, scores.tolist(), strict=True))
    return np.array([s for _, s in sorted(out)])
