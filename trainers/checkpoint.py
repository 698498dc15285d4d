"""Checkpoints of an inner run: one file, replaced atomically, holding everything the run
needs to continue as if it had never stopped (weights, optimizer, every RNG, progress);
and the run's result beside it."""

from __future__ import annotations

import json
import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainers.config import RESUMABLE_CHANGES, ConfigError
from trainers.models import Run

CHECKPOINT = "checkpoint.pt"
RESULT = "result.json"
"""What a run with a `run_dir` leaves beside its checkpoint: the `TrainResult` as JSON."""

log = logging.getLogger(__name__)


def save_run(run: Run, progress: dict[str, Any], run_dir: Path) -> None:
    """Checkpoint the run's weights, optimizer and RNGs, with its `progress` (plain values:
    `trainers.ppo.Progress.state`)."""
    state = {
        "config": run.config.to_dict(),
        "policy": run.policy.state_dict(),
        "value": run.value.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "rng": rng_states(),
        "attributors": {name: a.state() for name, a in run.shaper.attributors.items()},
        "progress": progress,
    }
    save(state, run_dir)
    log.info("checkpoint at step %d in %s", progress["step"], run_dir)


def resume(run: Run, run_dir: Path) -> dict[str, Any] | None:
    """Restore the run's weights, optimizer and RNGs from its folder's checkpoint, and return
    the progress saved with them; None when there is no checkpoint."""
    state = load(run_dir)
    if state is None:
        return None
    mine, theirs = run.config.to_dict(), state["config"]
    changed = sorted(k for k in mine if k not in RESUMABLE_CHANGES and mine[k] != theirs.get(k))
    if changed:
        raise ConfigError(
            f"run_dir={str(run_dir)!r} holds a run with another configuration (differs in "
            f"{changed}); give a new run_dir, or the same configuration to resume it"
        )
    run.policy.load_state_dict(state["policy"])
    run.value.load_state_dict(state["value"])
    run.optimizer.load_state_dict(state["optimizer"])
    set_rng_states(state["rng"])
    # "attributor_rng": what checkpoints held before methods had more state than generators
    for name, saved in state.get("attributors", state.get("attributor_rng", {})).items():
        run.shaper.attributors[name].load_state(saved)
    progress: dict[str, Any] = state["progress"]
    log.info("resumed %s at step %d", run_dir, progress["step"])
    return progress


def save_result(result: dict[str, Any], run_dir: Path) -> None:
    """Write the run's result (`TrainResult` as a dict) beside its checkpoint, atomically."""
    tmp = run_dir / f".{RESULT}.tmp"
    tmp.write_text(json.dumps(result, indent=1, default=str))
    os.replace(tmp, run_dir / RESULT)


def rng_states() -> dict[str, Any]:
    """The global RNGs of torch (CPU and CUDA), numpy and Python, as plain values."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    assert isinstance(keys, np.ndarray)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": random.getstate(),
    }


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))


def save(state: dict[str, Any], run_dir: Path) -> Path:
    """Write the checkpoint to a temporary file, sync it, then rename it over the old one:
    a crash leaves either the old checkpoint or the new one, never half of one."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / CHECKPOINT
    tmp = run_dir / f".{CHECKPOINT}.tmp"
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def load(run_dir: Path) -> dict[str, Any] | None:
    """The run's checkpoint on the CPU (RNG states must live there), or None."""
    path = run_dir / CHECKPOINT
    if not path.is_file():
        return None
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    return state
