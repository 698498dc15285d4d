"""A study with `amortized` among its methods: `shapetune run` builds the reward model's
explainer once, before any trial, and every amortized run starts from it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from service.cli import app
from service.store.artifacts import page_artifacts
from trainers import explainer

runner = CliRunner()


def test_a_study_builds_the_explainer_once_and_its_amortized_runs_start_from_it(
    tmp_path: Path, make_spec: Callable[..., dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(explainer, "DEFAULT", explainer.ExplainerSettings(96, 2, epochs=2))
    builds: list[int] = []
    real = explainer.build_explainer
    monkeypatch.setattr(
        explainer, "build_explainer", lambda *a, **k: builds.append(1) or real(*a, **k)
    )
    spec = make_spec(methods=["sparse", "amortized"], budget=3, seeds=2)
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec))
    home = tmp_path / "home"
    result = runner.invoke(app, ["run", str(spec_file), "--home", str(home)])
    assert result.exit_code == 0, result.output
    assert builds == [1]  # by the command, before the trials; no run built its own
    (folder,) = [p for p in (home / "explainers").iterdir() if p.is_dir()]
    assert (folder / explainer.NET).is_file()
    url = f"sqlite:///{home / 'studies.db'}"
    checkpoints = [a.path for a in page_artifacts(url, spec["name"])[0] if a.kind == "checkpoint"]
    started = [
        state["attributors"]["amortized"]["pretrained"]
        for state in (torch.load(path, weights_only=True) for path in checkpoints)
        if "amortized" in state["attributors"]
    ]
    assert started and all(started), started  # the pure amortized arm at least, both seeds
