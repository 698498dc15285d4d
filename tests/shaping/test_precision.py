"""`shaping.coalition_dtype: auto`: bf16 only where the hardware computes in it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2ForSequenceClassification

from shaping.precision import cpu_flags, native_bf16
from shaping.reward_model import HFRewardModel
from trainers import models
from trainers.config import ShapingConfig
from trainers.tasks.synthetic import SyntheticReward, word_tokenizer


def test_cpu_flags_are_read_from_cpuinfo_and_missing_ones_mean_none(tmp_path: Path) -> None:
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n\nprocessor\t: 1\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n")
    assert cpu_flags(x86) == {"fpu", "avx2", "avx512f", "avx512_bf16"}
    assert "bf16" in cpu_flags(arm)
    assert cpu_flags(tmp_path / "absent") == frozenset()


@pytest.mark.parametrize(
    ("flags", "native"),
    [
        ({"avx2", "fma"}, False),  # emulated: 8.8x slower than float32
        ({"avx512f", "avx512bw"}, False),  # AVX-512 without its BF16 extension
        ({"avx512f", "avx512_bf16"}, True),
        ({"amx_tile", "amx_bf16"}, True),
        ({"asimd", "bf16"}, True),
    ],
)
def test_native_bf16_on_the_cpu_follows_its_instructions(flags: set[str], native: bool) -> None:
    assert native_bf16(torch.device("cpu"), frozenset(flags)) is native
    assert native_bf16(torch.device("meta"), frozenset(flags)) is False


def test_auto_casts_a_hugging_face_rm_only_on_native_hardware(monkeypatch) -> None:
    tokenizer = word_tokenizer(10)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=16, n_layer=1, n_head=2, num_labels=1)
    rm = HFRewardModel(GPT2ForSequenceClassification(config), tokenizer)
    function = SyntheticReward(tokenizer, seed=0, interaction=0.0)
    auto, cpu = ShapingConfig(), torch.device("cpu")
    assert auto.coalition_dtype == "auto"
    for native, expected in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(models, "native_bf16", lambda device, native=native: native)
        assert models.coalition_dtype(auto, rm, cpu) == expected
        assert models.coalition_dtype(auto, function, cpu) == torch.float32  # nothing to cast
        shaper = models.build_shaper(rm, auto, {}, tokenizer, cpu)
        scoring = shaper.scorer.coalition_rm.rm.model  # type: ignore[attr-defined]
        assert next(scoring.parameters()).dtype == expected
    pinned = ShapingConfig(coalition_dtype="float32")
    assert models.coalition_dtype(pinned, rm, cpu) == torch.float32  # native, but pinned
