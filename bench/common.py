"""What every benchmark shares: the record of the machine a figure was measured on, and the
series of one metric from a run's curves.

Scripts run as `python bench/NAME.py`, which puts this folder on the path: `from common
import machine`.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np

CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
"""The instructions that changed the reward model's speed by up to 4x between machines of
one kind (bf16 matmuls): every figure says which of them its CPU had."""


def machine() -> dict[str, Any]:
    """The CPU's model and flags, cores, load average at the start, the GPU torch sees (when
    the script uses torch), Python and torch versions."""
    model, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    torch = sys.modules.get("torch")  # reported only if the benchmark imported it
    gpu = None
    if torch is not None and torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(0)
    return {
        "cpu": model,
        "cpu_flags": [f for f in CPU_FLAGS if f in flags],
        "cores": os.cpu_count(),
        "load_at_start": round(os.getloadavg()[0], 2),
        "gpu": gpu,
        "python": platform.python_version(),
        "torch": None if torch is None else torch.__version__,
        "platform": platform.platform(),
    }


def series(run: dict[str, Any], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of metric `key` over a run's evaluated steps (NaN where missing)."""
    steps = sorted(run["curves"])
    return np.array(steps), np.array([run["curves"][s].get(key, np.nan) for s in steps])
