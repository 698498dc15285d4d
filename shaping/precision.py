"""Whether the hardware computes in bfloat16, for `shaping.coalition_dtype: auto`.

A bf16 copy of the reward model pays only where bf16 arithmetic is native: CUDA devices
that support it, x86 CPUs with AVX-512 BF16 or AMX-BF16, Arm CPUs with the BF16 extension.
Elsewhere torch emulates it, and masked variants were 8.8x slower than in float32 (2 cores
with AVX2, bench/teacher_bench.py).
"""

from __future__ import annotations

from pathlib import Path

import torch

BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})
"""/proc/cpuinfo's names of native bf16 instructions: x86 ("flags") and Arm ("Features")."""


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's instruction-set flags, as Linux names them; empty where it cannot tell."""
    try:
        text = cpuinfo.read_text()
    except OSError:  # not Linux: no native bf16 assumed, float32 is the safe side
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def native_bf16(device: torch.device, flags: frozenset[str] | None = None) -> bool:
    """Whether `device` computes in bfloat16 natively (`flags`: the CPU's, read if None)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    return bool(BF16_FLAGS & (cpu_flags() if flags is None else flags))
