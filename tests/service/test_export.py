"""`shapetune export STUDY --to verl OUT`: the shape file, the module, the config and the
README of a study's trial, the rewards they give equal to the study's own shaper's, and
every refusal (exit 2, nothing written). verl itself is tested in tests/verl/, in an
environment of its own."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
import yaml
from typer.testing import CliRunner

from service.cli import app
from service.store.studies import create_study
from service.tuning.contracts import TrialRecord
from service.tuning.spec.model import StudySpec, parse_spec
from shaping.attribution.amortized import AmortizedAttributor
from shaping.batch import RolloutBatch
from trainers import explainer
from trainers.explainer import ExplainerSettings
from trainers.models import build_shaper
from trainers.portable_shape import PortableShape, ShapedRewards, ShapeFileError
from trainers.tasks import make_task
from trainers.tasks.imdb.prepare import Prepared

runner = CliRunner()
TINY_IMDB = {"name": "imdb-sentiment", "options": {"size": "tiny"}}
SHAPE = {"sparse": 0.2, "red": 0.5, "shapley": 0.3}


def _study(
    url: str, make_spec: Callable[..., dict[str, Any]], task: dict[str, Any], best: dict[str, float]
) -> StudySpec:
    """A stored study whose completed trials are the sparse arm (0.1) and `best` (0.3)."""
    spec = parse_spec(
        make_spec(task=task, methods=list(best), budget=2, seeds=2, seed=3, executor="inline")
    )
    create_study(url, spec.name, spec.stored())
    study = optuna.create_study(study_name=spec.name, storage=url, direction="maximize")
    sparse = {m: float(m == "sparse") for m in best}
    arms = [("pure sparse", sparse, 0.1), ("", best, 0.3)]
    for k, (label, weights, value) in enumerate(arms):
        record = TrialRecord(label=label, weights=weights, seed_values=[value, value])
        study.add_trial(
            optuna.trial.create_trial(
                value=value,
                params={"k": float(k)},
                distributions={"k": optuna.distributions.FloatDistribution(0, 10)},
                user_attrs=record.to_user_attrs(),
            )
        )
    return spec


def _export(home: Path, url: str, *args: str) -> Any:
    return runner.invoke(
        app, ["export", *args, "--home", str(home), "--storage", url], catch_exceptions=False
    )


def _batch(home: Path) -> tuple[Any, tuple[torch.Tensor, ...]]:
    """Responses sampled from the tiny policy, as verl pads them: prompts on the left,
    responses on the right, to widths wider than any row."""
    task = make_task("imdb-sentiment", home, size="tiny")
    prompts = task.prompts("eval")[:4]
    policy = task.load_policy()
    torch.manual_seed(0)
    rows = []
    for p in prompts:
        out = policy.generate(
            torch.tensor([p]), do_sample=True, max_new_tokens=12, pad_token_id=0, eos_token_id=None
        )
        rows.append(out[0, len(p) :].tolist()[: 6 + len(rows)])  # ragged lengths
    P, T = max(map(len, prompts)) + 2, 16
    ids = torch.zeros(4, P, dtype=torch.long), torch.zeros(4, T, dtype=torch.long)
    masks = torch.zeros(4, P, dtype=torch.long), torch.zeros(4, T, dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompts, rows, strict=True)):
        ids[0][i, P - len(p) :], masks[0][i, P - len(p) :] = torch.tensor(p), 1
        ids[1][i, : len(r)], masks[1][i, : len(r)] = torch.tensor(r), 1
    return task, (ids[0], masks[0], ids[1], masks[1])


def test_the_best_trial_exports_with_the_rewards_of_the_studys_own_shaper(
    tiny_home: Path, tiny_prepared: Prepared, tmp_path: Path, make_spec: Callable[..., Any]
) -> None:
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    spec = _study(url, make_spec, TINY_IMDB, SHAPE)
    name = spec.name
    out = tmp_path / "exported"
    result = _export(tiny_home, url, name, str(out), "--to", "verl")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "reward_model",  # the built-in RM's tokenizer lies in the policy's folder: copied in
        "shape.json",
        "shapetune_reward.py",
        "verl_config.yaml",
    ]
    shape = PortableShape.load(out / "shape.json")
    assert shape.shaping.weights == SHAPE
    assert shape.shaping.options["shapley"]["seed"] == 3  # the study's first seed, fixed
    assert (shape.origin.study, shape.origin.trial, shape.origin.task) == (
        name,
        1,
        "imdb-sentiment",
    )
    assert shape.reward_model.model == shape.reward_model.tokenizer == out / "reward_model"
    copied = {p.name for p in (out / "reward_model").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= copied
    assert (out / "reward_model" / "model.safetensors").read_bytes() == (
        tiny_prepared.root / "reward_model" / "model.safetensors"
    ).read_bytes()
    config = yaml.safe_load((out / "verl_config.yaml").read_text())
    assert config["algorithm"]["adv_estimator"] == "gae"
    assert config["reward"]["reward_manager"] == {
        "source": "importlib",
        "name": "ShapedRewardManager",
        "module": {"path": str(out / "shapetune_reward.py")},
    }
    compile((out / "shapetune_reward.py").read_text(), "shapetune_reward.py", "exec")
    assert "ShapedLegacyRewardManager" in (out / "README.md").read_text()

    # What the export gives a padded batch is what the inner run's shaper gives it.
    task, padded = _batch(tiny_home)
    shaped = ShapedRewards.load(out / "shape.json", task.tokenizer)(*padded)
    config_of_trial = spec.train_config(SHAPE, {}, seed=3)
    own = build_shaper(  # as the inner run builds it (masked variants in bf16 where native)
        task.load_reward_model(),
        config_of_trial.shaping,
        config_of_trial.method_options(),
        task.tokenizer,
        torch.device("cpu"),
    )
    scorer = own.scorer
    prompts = [r[m.bool()].tolist() for r, m in zip(padded[0], padded[1], strict=True)]
    responses = [r[m.bool()].tolist() for r, m in zip(padded[2], padded[3], strict=True)]
    scores = scorer.score_responses(prompts, responses)
    expected = own(RolloutBatch.from_lists(prompts, responses, scores.tolist(), 0))
    width = expected.shape[1]
    torch.testing.assert_close(shaped.rewards[:, :width], expected, atol=1e-6, rtol=0)
    assert not shaped.rewards[:, width:].any()


def test_an_amortized_shape_travels_with_its_reward_models_explainer(
    tiny_home: Path,
    tiny_prepared: Prepared,
    tmp_path: Path,
    make_spec: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The explainer the study's runs started from (built here first) is exported beside
    shape.json, and the exported shaper starts from it."""
    monkeypatch.setattr(explainer, "DEFAULT", ExplainerSettings(responses=96, pairs=2, epochs=2))
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    spec = _study(url, make_spec, TINY_IMDB, {"sparse": 0.5, "amortized": 0.5})
    out = tmp_path / "exported"
    result = _export(tiny_home, url, spec.name, str(out), "--to", "verl")
    assert result.exit_code == 0, result.output
    built = next((tiny_home / "explainers").glob("*/explainer.pt"))
    assert (out / "explainer.pt").read_bytes() == built.read_bytes()
    task, padded = _batch(tiny_home)
    shaped = ShapedRewards.load(out / "shape.json", task.tokenizer)
    amortized = shaped.shaper.attributors["amortized"]
    assert isinstance(amortized, AmortizedAttributor) and amortized.pretrained
    assert torch.isfinite(shaped(*padded).rewards).all()


def test_copy_rm_makes_an_export_that_travels(
    tiny_home: Path, tiny_prepared: Prepared, tmp_path: Path, make_spec: Callable[..., Any]
) -> None:
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    name = _study(url, make_spec, TINY_IMDB, SHAPE).name
    result = _export(tiny_home, url, name, str(tmp_path / "a"), "--trial", "0", "--copy-rm")
    assert result.exit_code == 0, result.output
    moved = shutil.move(tmp_path / "a", tmp_path / "elsewhere" / "b")
    shape = PortableShape.load(Path(moved) / "shape.json")
    assert shape.shaping.weights["sparse"] == 1.0
    assert shape.reward_model.model == Path(moved) / "reward_model"
    task = make_task("imdb-sentiment", tiny_home, size="tiny")
    assert ShapedRewards.load(Path(moved) / "shape.json", task.tokenizer).shaper.weights == {
        "sparse": 1.0
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--estimator", "grpo"], "sums each response's rewards"),
        (["--trial", "7"], "no completed trial 7"),
        (["--to", "trl"], "exports to verl"),
    ],
)
def test_bad_requests_are_refused_and_write_nothing(
    tiny_home: Path,
    tiny_prepared: Prepared,
    tmp_path: Path,
    make_spec: Callable[..., Any],
    args: list[str],
    message: str,
) -> None:
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    name = _study(url, make_spec, TINY_IMDB, SHAPE).name
    result = _export(tiny_home, url, name, str(tmp_path / "out"), *args)
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
    assert not [p for p in tmp_path.iterdir() if not p.name.startswith("studies.db")]


def test_a_shape_over_a_torch_reward_function_or_into_a_full_folder_is_refused(
    tiny_home: Path, tmp_path: Path, make_spec: Callable[..., Any]
) -> None:
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    name = _study(url, make_spec, {"name": "synthetic"}, SHAPE).name
    result = _export(tiny_home, url, name, str(tmp_path / "out"))
    assert result.exit_code == 2
    assert "reward function written in torch" in " ".join(result.output.split())
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    result = _export(tiny_home, url, name, str(tmp_path / "full"))
    assert result.exit_code == 2
    assert "not an empty folder" in " ".join(result.output.split())
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(format=9), "format 9 is not 1"),
        (lambda d: d.pop("origin"), "missing ['origin']"),
        (lambda d: d["shaping"].update(weights={"sparse": 0.5}), "sum to 1"),
        (lambda d: d["reward_model"].update(model="gone"), "does not exist"),
        (lambda d: d["reward_model"].update(mask_token_id="x"), "give a token id or null"),
    ],
)
def test_a_bad_shape_file_names_the_file_and_the_problem(
    tiny_home: Path,
    tiny_prepared: Prepared,
    tmp_path: Path,
    make_spec: Callable[..., Any],
    edit: Callable[[dict[str, Any]], Any],
    message: str,
) -> None:
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    name = _study(url, make_spec, TINY_IMDB, SHAPE).name
    assert _export(tiny_home, url, name, str(tmp_path / "out")).exit_code == 0
    path = tmp_path / "out" / "shape.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    task = make_task("imdb-sentiment", tiny_home, size="tiny")
    with pytest.raises(ShapeFileError) as caught:
        ShapedRewards.load(path, task.tokenizer)
    assert message in str(caught.value)
