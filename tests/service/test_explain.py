from pathlib import Path

import pytest
from typer.testing import CliRunner

from service.cli import app
from shaping.attribution import ATTRIBUTORS
from trainers.tasks.imdb.prepare import Prepared

runner = CliRunner()


def test_explain_on_the_tiny_builtin_rm(tiny_home: Path, tiny_prepared: Prepared, tmp_path: Path):
    page, image = tmp_path / "credits.html", tmp_path / "credits.png"
    result = runner.invoke(
        app,
        [
            "explain",
            "--prompt",
            "This movie was",
            "--response",
            "great, really great!",
            "--home",
            str(tiny_home),
            "-o",
            "size=tiny",
            "--html",
            str(page),
            "--png",
            str(image),
        ],
        terminal_width=250,
    )
    assert result.exit_code == 0, result.output
    # every method but amortized, which needs a trained network (a run's checkpoint)
    shown = [name for name, method in ATTRIBUTORS.items() if not method.learns]
    assert all(name in result.output for name in shown) and "amortized" not in result.output
    text = page.read_text()
    assert text.count("<tr><th>") == 1 + len(shown)  # the header, one row per method
    assert "<script" not in text  # self-contained: nothing to fetch
    assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_explain_sums_and_rows_on_the_synthetic_task() -> None:
    result = runner.invoke(
        app,
        ["explain", "--task", "synthetic", "--prompt", "w1", "--response", "w3 w4", "-m", "red"],
    )
    assert result.exit_code == 0, result.output
    assert "red" in result.output and "shapley" not in result.output


def test_explain_refuses_bad_input(tmp_path: Path) -> None:
    both = runner.invoke(app, ["explain", "w1", "--response", "w2", "--task", "synthetic"])
    assert both.exit_code == 2 and "not both" in both.output
    unknown = runner.invoke(app, ["explain", "w1", "--task", "synthetic", "-m", "magic"])
    assert unknown.exit_code == 2 and "unknown attribution method 'magic'" in unknown.output
    missing = runner.invoke(app, ["explain", "hello", "--home", str(tmp_path)])
    assert missing.exit_code == 2 and "shapetune prepare" in missing.output


def test_amortized_credit_is_explained_with_the_network_a_run_trained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`train` builds the RM's explainer first (small here: the defaults take ~20 s on the
    synthetic task), then explains with the network as the run left it."""
    from trainers import explainer

    small = explainer.ExplainerSettings(responses=96, pairs=2, epochs=2)
    monkeypatch.setattr(explainer, "DEFAULT", small)
    synthetic = ["--task", "synthetic", "-o", "n_words=16", "-o", "response_length=6"]
    run_dir = tmp_path / "run"
    trained = runner.invoke(
        app,
        [
            *("train", *synthetic, "--weights", "amortized=0.5,sparse=0.5", "--steps", "3"),
            *("-m", "amortized.pairs=2", "-m", "shapley.permutations=4"),
            *("--ppo", "rollout_batch=8", "--ppo", "minibatch=4", "--ppo", "epochs=1"),
            *("--eval-prompts", "8", "--device", "cpu", "--threads", "1"),
            *("--run-dir", str(run_dir), "--home", str(tmp_path)),
        ],
    )
    assert trained.exit_code == 0, trained.output
    assert len(list((tmp_path / "explainers").iterdir())) == 2  # the explainer and its lock
    explain = ["explain", *synthetic, "--prompt", "w1", "--response", "w3 w4 w5", "-m", "amortized"]
    untrained = runner.invoke(app, explain)
    assert untrained.exit_code == 2 and "explain --checkpoint RUN_DIR" in untrained.output
    result = runner.invoke(app, [*explain, "--checkpoint", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert "amortized" in result.output
    missing = runner.invoke(app, [*explain, "--checkpoint", str(tmp_path / "nothing")])
    assert missing.exit_code == 2 and "holds no checkpoint" in missing.output


def test_an_explainer_that_cannot_be_built_is_a_named_error_not_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shaping.reward_model import NoStatesError
    from trainers import explainer

    def stateless(*args: object, **kwargs: object) -> None:
        raise NoStatesError(object())

    monkeypatch.setattr(explainer, "ensure_explainer", stateless)
    synthetic = ["--task", "synthetic", "-o", "n_words=16", "-o", "response_length=6"]
    result = runner.invoke(
        app,
        [
            *("train", *synthetic, "--weights", "amortized=1", "--steps", "1"),
            *("--run-dir", str(tmp_path / "run"), "--home", str(tmp_path)),
        ],
    )
    assert result.exit_code == 2, result.output
    assert "explainer could not be built" in result.output
    assert "scores_and_states" in " ".join(result.output.split())
    assert "Traceback" not in result.output
