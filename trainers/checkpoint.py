"""Checkpoints of an inner run: one file, replaced atomically, holding everything the run
needs to continue as if it had never stopped (weights, optimizer, every RNG, progress)."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shaping.shaper import Shaper

CHECKPOINT = "checkpoint.pt"


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


def attributor_rng_states(shaper: Shaper) -> dict[str, dict[str, torch.Tensor]]:
    """The torch generators the attribution methods hold (sampled Shapley permutations...),
    so a resumed run draws what the uninterrupted one would have drawn."""
    return {
        name: {k: v.get_state() for k, v in vars(a).items() if isinstance(v, torch.Generator)}
        for name, a in shaper.attributors.items()
    }


def set_attributor_rng_states(shaper: Shaper, states: dict[str, dict[str, torch.Tensor]]) -> None:
    for name, generators in states.items():
        attributor = vars(shaper.attributors[name])
        for key, state in generators.items():
            attributor[key].set_state(state)


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
