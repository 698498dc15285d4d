import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from service.cli import app

runner = CliRunner()
SMALL = [
    *("--task", "synthetic", "-o", "n_words=16", "-o", "response_length=6"),
    *("--ppo", "rollout_batch=8", "--ppo", "minibatch=4", "--ppo", "epochs=1"),
    *("--eval-interval", "2", "--eval-prompts", "8", "--device", "cpu", "--threads", "1"),
]


def test_train_writes_curve_result_and_checkpoint(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args = ["train", *SMALL, "--weights", "red=0.5,sparse=0.5", "--steps", "2"]
    result = runner.invoke(app, [*args, "--run-dir", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert "held-out evaluation" in result.output and "rm_rows_per_response" in result.output
    assert (run_dir / "learning_curve.png").stat().st_size > 1000
    assert (run_dir / "checkpoint.pt").is_file()
    saved = json.loads((run_dir / "result.json").read_text())
    assert saved["steps"] == 2 and set(saved["curves"]) == {"0", "2"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--weights", "red=0.5,sparse=0.4"], "sum to 1"),
        (["--weights", "magic=1"], "unknown method"),
        (["--weights", "red"], "is not METHOD=WEIGHT"),
        (["--task", "chess"], "task.name='chess'"),
        (["--ppo", "learning_rate=1"], "--ppo.*learning_rate"),
        (["-m", "unit=span"], "METHOD.OPTION=VALUE"),
        (["-o", "n_words=1"], "n_words=1"),
    ],
)
def test_train_refuses_bad_input_with_exit_code_2(
    tmp_path: Path, args: list[str], message: str
) -> None:
    result = runner.invoke(app, ["train", *SMALL, *args, "--run-dir", str(tmp_path / "r")])
    assert result.exit_code == 2, result.output
    assert "error" in result.output
    assert message.split(".*")[-1] in result.output
    assert not (tmp_path / "r").exists()
