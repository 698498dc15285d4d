"""bench/gpu_smoke.py's CPU path (its CUDA path runs where a GPU is): an inner run with
Shapley-family credit, a two-trial study on Ray, and the exported shape, each measured."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from trainers.tasks.imdb.prepare import Prepared

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gpu_smoke.py"


@pytest.mark.e2e
def test_the_cpu_path_measures_all_three(
    tiny_home: Path,
    tiny_prepared: Prepared,
    ray_cluster: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.syspath_prepend(str(SCRIPT.parent))  # as `python bench/gpu_smoke.py` runs it
    spec = importlib.util.spec_from_file_location("gpu_smoke", SCRIPT)
    assert spec is not None and spec.loader is not None
    smoke = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(smoke)
    out = tmp_path / "gpu.json"
    smoke.main(["--size", "tiny", "--steps", "2", "--home", str(tiny_home), "--out", str(out)])
    cpu = json.loads(out.read_text())["cpu"]
    assert cpu["inner_run"]["seconds_per_step"] > 0
    assert 0 < cpu["inner_run"]["attribution_share"] < 1
    assert cpu["study_on_ray"] == {**cpu["study_on_ray"], "trials": 2, "gpus_per_run": 0}
    assert cpu["exported_shape"]["responses"] == 16
    assert cpu["exported_shape"]["seconds_per_response"] > 0
    assert json.loads(out.read_text())["machine"]["cores"] >= 1
