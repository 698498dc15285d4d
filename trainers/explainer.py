"""The explainer of a task's reward model: a FastSHAP credit network trained once, cached,
and started from by every run that credits with `amortized` on that reward model.

Training data: responses the task's initial policy samples for its training prompts at
several temperatures (the responses PPO starts from, and the more and less likely ones it
may move to), each scored as PPO scores it, with v(empty) and `pairs` coalition pairs drawn
from the Shapley kernel's distribution. Every RM row is a training signal of the FastSHAP
objective (`shaping.explainer`); a tenth of the responses is held out, and the network of
the epoch that fits them best is kept.

The stage lives under `<home>/explainers/<key hash>`, built in a hidden folder and renamed
into place (`trainers.tasks.cache`), under a file lock: Ray workers that start runs on the
same reward model together wait for one build instead of each making their own.
"""

from __future__ import annotations

import fcntl
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

import torch

from shaping.attribution.amortized import AmortizedAttributor, Inputs, collate
from shaping.batch import RolloutBatch
from shaping.explainer import CreditNet, efficient, fastshap_loss, load_net, save_net
from trainers.config import ShapingConfig
from trainers.models import build_shaper, generation_config, sample
from trainers.tasks.base import Task
from trainers.tasks.cache import cached_stage, file_sha256, key_hash

NET = "explainer.pt"
CPU = torch.device("cpu")
Progress = Callable[[str, int, int], None]
"""(what, done, total): how far a build is."""


def explainers_root(home: Path) -> Path:
    """Where the explainers of every reward model are cached under a shapetune home."""
    return home / "explainers"


def _no_progress(what: str, done: int, total: int) -> None:
    return None


@dataclass(frozen=True)
class ExplainerSettings:
    """How the explainer is trained; part of its cache key."""

    responses: int = 12288
    """Responses sampled from the initial policy, a third at each temperature. On the built-in
    RM (bench/explainer_sweep.py, 24 tokens) 12,288 with 8 pairs each gave 0.30 relative L2
    error against token Shapley at 5 RM rows a response, 3,072 gave 0.34-0.37."""
    pairs: int = 8
    """Coalition pairs scored per response (1 + 2 pairs RM rows each)."""
    temperatures: tuple[float, ...] = (0.7, 1.0, 1.3)
    width: int = 128
    layers: int = 2
    epochs: int = 24
    batch: int = 64
    lr: float = 1e-3
    held_out: float = 0.1
    seed: int = 0


DEFAULT = ExplainerSettings()


@dataclass(frozen=True)
class ExplainerStage:
    net: CreditNet
    folder: Path
    info: dict[str, Any]
    built: bool


def reward_model_identity(task: Task) -> dict[str, Any]:
    """What names the reward model (and the policy whose responses train the explainer):
    the hash of each RM file where the task has them on disk, and the task's own details."""
    files = task.reward_model_files()
    details = {k: v for k, v in task.info().details.items() if k not in ("root", "samples")}
    identity: dict[str, Any] = {"task": task.name, "details": details}
    if files is not None:
        identity["rm_files"] = {
            p.name: file_hash(p) for p in sorted(files.model.iterdir()) if p.is_file()
        }
    return identity


def file_hash(path: Path) -> str:
    """The file's SHA-256, hashed once per process while its size, time and inode stay the
    same: a Ray worker runs many trials on one reward model, which may be gigabytes."""
    stat = path.stat()
    return _hashed(str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)


@cache
def _hashed(path: str, size: int, mtime_ns: int, inode: int) -> str:
    return file_sha256(Path(path))


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_explainer(
    task: Task,
    response_length: int,
    root: Path,
    settings: ExplainerSettings | None = None,
    on_progress: Progress = _no_progress,
    force: bool = False,
    device: torch.device = CPU,
) -> ExplainerStage:
    """The cached explainer of `task`'s reward model for responses of up to
    `response_length` tokens, built first (sampling and scoring on `device`) if missing or
    invalid."""
    settings = settings or DEFAULT
    key = {
        "stage": "explainer",
        "identity": reward_model_identity(task),
        "response_length": response_length,
        "settings": asdict(settings),
    }
    name = key_hash(key)[:16]
    with _locked(root / f".{name}.lock"):
        record = cached_stage(
            root,
            name,
            key,
            lambda out: build_explainer(task, response_length, settings, out, on_progress, device),
            force=force,
        )
    return ExplainerStage(load_net(record.path / NET), record.path, record.info, record.built)


def build_explainer(
    task: Task,
    response_length: int,
    settings: ExplainerSettings,
    out: Path,
    on_progress: Progress = _no_progress,
    device: torch.device = CPU,
) -> dict[str, Any]:
    """Sample, score and train; write the network to `out`; return the build's figures."""
    started = time.perf_counter()
    with torch.random.fork_rng():
        torch.manual_seed(settings.seed)
        data, rows = collect(task, response_length, settings, on_progress, device)
        sampled = time.perf_counter() - started
        net, figures = fit(data, settings, on_progress)
    save_net(net, out / NET)
    return {
        "responses": len(data),
        "rm_rows": rows,
        "sample_and_score_seconds": round(sampled, 1),
        "train_seconds": round(time.perf_counter() - started - sampled, 1),
        **figures,
    }


def collect(
    task: Task,
    response_length: int,
    settings: ExplainerSettings,
    on_progress: Progress,
    device: torch.device = CPU,
) -> tuple[list[Inputs], int]:
    """Every response's network inputs and scored coalitions, and the RM rows they cost."""
    policy = task.load_policy().eval().to(device)
    tok = task.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    shaper = build_shaper(
        task.load_reward_model(),
        ShapingConfig({"amortized": 1.0}),
        {"amortized": {"seed": settings.seed, "audit_every": 0, "lr": 0.0}},
        tok,
        device,
    )
    scorer, attributor = shaper.scorer, shaper.attributors["amortized"]
    assert isinstance(attributor, AmortizedAttributor)
    prompts = task.prompts("train")
    chunk, data = 64, list[Inputs]()
    order = torch.randperm(len(prompts)).tolist()
    per_temperature = settings.responses // len(settings.temperatures)
    for temperature in settings.temperatures:
        generation = generation_config(tok.eos_token_id, pad, response_length, temperature, False)
        for start in range(0, per_temperature, chunk):
            n = min(chunk, per_temperature - start)
            picked = [prompts[order[(len(data) + j) % len(order)]] for j in range(n)]
            with torch.no_grad():
                responses = sample(policy, picked, generation, device).response_lists()
            scores = scorer.score_responses(picked, responses)
            batch = RolloutBatch.from_lists(picked, responses, scores.tolist(), pad_id=pad)
            data += attributor.inputs(scorer.view(batch).batch, settings.pairs)
            on_progress("score responses", len(data), settings.responses)
    return data, scorer.stats.rows


def fit(
    data: list[Inputs], settings: ExplainerSettings, on_progress: Progress
) -> tuple[CreditNet, dict[str, Any]]:
    """FastSHAP on the scored coalitions; the epoch that fits held-out responses best."""
    held = max(1, round(settings.held_out * len(data)))
    train, test = data[held:], data[:held]
    net = CreditNet(data[0].states.shape[-1], settings.width, settings.layers)
    optimizer = torch.optim.Adam(net.parameters(), lr=settings.lr)
    variance = _gain_variance(test)
    best, best_loss, curve = net.state_dict(), float("inf"), []
    for epoch in range(1, settings.epochs + 1):
        for idx in torch.randperm(len(train)).split(settings.batch):
            states, scalars, mask, coalitions, gains, weight, totals = collate(
                [train[k] for k in idx.tolist()]
            )
            credits = efficient(net(states, scalars, mask), totals, mask)
            loss = fastshap_loss(credits, coalitions, gains, weight)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        held_loss = _loss(net, test)
        curve.append(round(held_loss, 5))
        if held_loss < best_loss:
            best, best_loss = {k: v.clone() for k, v in net.state_dict().items()}, held_loss
        on_progress("train explainer", epoch, settings.epochs)
    net.load_state_dict(best)
    return net, {
        "held_out_loss": round(best_loss, 5),
        "held_out_r2": round(1 - best_loss / variance, 4),
        "held_out_curve": curve,
    }


@torch.no_grad()
def _loss(net: CreditNet, data: list[Inputs]) -> float:
    states, scalars, mask, coalitions, gains, weight, totals = collate(data)
    credits = efficient(net(states, scalars, mask), totals, mask)
    return float(fastshap_loss(credits, coalitions, gains, weight))


def _gain_variance(data: list[Inputs]) -> float:
    """Variance of the held-out gains v(S) - v(empty): what a fit's loss is measured by."""
    gains = torch.cat([x.gains for x in data])
    return float(gains.var()) if gains.numel() > 1 else 1.0
