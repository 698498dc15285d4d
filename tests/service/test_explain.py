from pathlib import Path

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
    assert all(name in result.output for name in ATTRIBUTORS)
    text = page.read_text()
    assert text.count("<tr><th>") == 1 + len(ATTRIBUTORS)  # the header, one row per method
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
