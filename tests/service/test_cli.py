import json
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from service.cli import app
from trainers.tasks.imdb.config import SIZES, PrepareConfig
from trainers.tasks.imdb.prepare import STAGES, Prepared, task_root

runner = CliRunner()


def test_prepare_reports_cached_stages_as_json(tiny_home: Path, tiny_prepared: Prepared) -> None:
    result = runner.invoke(
        app, ["prepare", "--size", "tiny", "--home", str(tiny_home), "--json", "-q"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["root"] == str(tiny_prepared.root)
    assert not any(s["built"] for s in summary["stages"].values())
    assert summary["cache_bytes"] > 0
    assert summary["report"]["rm_accuracy_reviews"] == tiny_prepared.report["rm_accuracy_reviews"]


def test_prepare_shows_a_bar_row_per_stage(tmp_path: Path, tiny_prepared: Prepared) -> None:
    root = task_root(tmp_path, PrepareConfig(size="tiny"))
    shutil.copytree(tiny_prepared.root, root)
    shutil.rmtree(root / "reward_model")  # rebuilt; every other stage is cached
    result = runner.invoke(app, ["prepare", "--size", "tiny", "--home", str(tmp_path)])
    assert result.exit_code == 0, result.output
    # The bar's rows start a line; the summary table's rows start with a border.
    steps = SIZES["tiny"].rm_steps
    assert re.search(rf"^reward_model .* {steps}/{steps} ", result.output, re.MULTILINE)
    for stage in (s for s in STAGES if s != "reward_model"):
        assert re.search(rf"^{stage} \(cached\) .* 1/1 ", result.output, re.MULTILINE), stage


def test_prepare_refuses_unknown_size(tmp_path: Path) -> None:
    result = runner.invoke(app, ["prepare", "--size", "huge", "--home", str(tmp_path)])
    assert result.exit_code == 2
    assert "unknown size 'huge'" in result.output
    assert not (tmp_path / "tasks").exists()


def test_tasks_show_imdb(tiny_home: Path, tiny_prepared: Prepared) -> None:
    result = runner.invoke(
        app, ["tasks", "show", "imdb-sentiment", "--home", str(tiny_home), "-o", "size=tiny"]
    )
    assert result.exit_code == 0, result.output
    assert "rm_accuracy_reviews" in result.output and "first eval prompt" in result.output


def test_tasks_show_names_the_fix(tmp_path: Path) -> None:
    result = runner.invoke(app, ["tasks", "show", "imdb-sentiment", "--home", str(tmp_path)])
    assert result.exit_code == 2
    assert "shapetune prepare" in result.output


def test_tasks_list_and_synthetic(tmp_path: Path) -> None:
    listed = runner.invoke(app, ["tasks", "list"])
    assert listed.exit_code == 0
    assert all(name in listed.output for name in ("imdb-sentiment", "synthetic", "hf"))
    shown = runner.invoke(
        app, ["tasks", "show", "synthetic", "-o", "response_length=4", "-o", "bad"]
    )
    assert shown.exit_code == 2 and "not KEY=VALUE" in shown.output
    shown = runner.invoke(app, ["tasks", "show", "synthetic", "-o", "response_length=4"])
    assert shown.exit_code == 0 and "response_length" in shown.output


def test_the_default_owner_is_user_at_host_in_the_characters_the_api_accepts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from service.cli import options

    monkeypatch.setattr(options.getpass, "getuser", lambda: "Jane Doe/ü")
    monkeypatch.setattr(options.socket, "gethostname", lambda: "box-1.lab")
    assert options.default_owner() == "Jane_Doe__@box-1.lab"
    monkeypatch.setattr(options.socket, "gethostname", lambda: "h" * 300)
    owner = options.default_owner()
    assert len(owner) == 128 and re.fullmatch(r"[A-Za-z0-9._@+-]{1,128}", owner)


def test_out_of_a_terminal_progress_is_lines_a_log_keeps(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from service.cli.options import LogProgress, progress_bar

    assert isinstance(progress_bar(), LogProgress)  # pytest's output is no terminal
    clock = iter([0.0, 10.0, 50.0, 55.0, 90.0])
    with LogProgress(clock=lambda: next(clock)) as bar:
        job = bar.add_task("trials", total=4)  # t=0
        bar.update(job, completed=1)  # t=10: within the period, no line
        bar.update(job, completed=2)  # t=50: a periodic line
        bar.update(job, completed=3, description="best 0.1")  # t=55: a new description
        bar.update(job, completed=4)  # t=90: done
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "trials | 0/4 | 0 s | started",
        "trials | 2/4 | 50 s",
        "best 0.1 | 3/4 | 55 s",
        "best 0.1 | 4/4 | 90 s | done",
    ]
