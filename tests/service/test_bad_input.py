"""Bad input as a careless user or an attacker gives it, through every door a spec comes in:
`shapetune run` (exit 2, a message naming the problem, no traceback, nothing written) and
the API (422 naming every problem, nothing queued). One table, both doors."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from service.app import create_app
from service.cli import app as cli_app
from service.settings import Settings
from tests.service.conftest import TINY_INNER

runner = CliRunner()
MakeSpec = Callable[..., dict[str, Any]]


def _inner(**fields: Any) -> dict[str, Any]:
    inner = json.loads(json.dumps(TINY_INNER))
    for key, value in fields.items():  # "ppo.lr" sets inner["ppo"]["lr"]
        *path, last = key.split(".")
        target = inner
        for part in path:
            target = target.setdefault(part, {})
        target[last] = value
    return inner


Words = str | tuple[str, str]
"""What the error must hold: the same through both doors, or (CLI, API)."""
BAD_SPECS: list[tuple[str, dict[str, Any], Words]] = [
    # (id, fields over the tiny synthetic spec, words the error must hold)
    (
        "task option of the wrong type",
        {"task": {"name": "synthetic", "options": {"n_words": "abc"}}},
        "n_words='abc' should be an integer",
    ),
    (
        "task option a fraction",
        {"task": {"name": "synthetic", "options": {"train_prompts": 2.5}}},
        "train_prompts=2.5 should be an integer",
    ),
    (
        "task option a bool",
        {"task": {"name": "synthetic", "options": {"seed": True}}},
        "seed=True should be an integer",
    ),
    (
        "task option out of range",
        {"task": {"name": "synthetic", "options": {"n_words": 1}}},
        "n_words=1 is out of range",
    ),
    (
        "task option unknown",
        {"task": {"name": "synthetic", "options": {"colour": 1}}},
        "has no option(s) ['colour']",
    ),
    ("task options not a mapping", {"task": {"name": "synthetic", "options": [1]}}, "task.options"),
    ("unknown task", {"task": {"name": "chess"}}, "unknown task 'chess'"),
    (
        "knob range the trainer refuses",
        {"knobs": {"temperature": {"low": 50, "high": 500}}},
        "ppo.temperature=500",
    ),
    ("knob high end refused", {"knobs": {"lr": {"low": 0.001, "high": 5}}}, "ppo.lr=5"),
    (
        "knob low above high",
        {"knobs": {"lr": {"low": 0.1, "high": 0.01}}},
        "need finite low < high",
    ),
    ("log knob from zero", {"knobs": {"kl_coef": {"low": 0, "high": 1, "log": True}}}, "low > 0"),
    ("unknown knob", {"knobs": {"colour": {"low": 0, "high": 1}}}, "unknown knob(s) ['colour']"),
    (
        "knob also fixed",
        {"knobs": {"lr": {"low": 1e-5, "high": 1e-3}}, "inner": _inner(**{"ppo.lr": 1e-4})},
        "remove inner.ppo.lr",
    ),
    (
        "target NaN",
        {"objective": "steps_to_target", "target": float("nan")},
        ("target: Input should be", "NaN is not a number a spec may hold"),
    ),
    (
        "target infinite",
        {"objective": "steps_to_target", "target": float("inf")},
        ("target: Input should be", "Infinity is not a number a spec may hold"),
    ),
    ("steps_to_target without target", {"objective": "steps_to_target"}, "needs a `target`"),
    ("seeds a bool", {"seeds": True}, "seeds: Input should be a valid integer"),
    (
        "inner steps a bool",
        {"inner": _inner(steps=True)},
        "steps=True is invalid; give an integer >= 1",
    ),
    ("inner lr a bool", {"inner": _inner(**{"ppo.lr": True})}, "ppo.lr=True is invalid"),
    ("seeds a string", {"seeds": "2"}, "seeds: Input should be a valid integer"),
    ("seeds a fraction", {"seeds": 1.5}, "seeds: Input should be a valid integer"),
    ("budget zero", {"budget": 0}, "budget: Input should be greater than or equal to 1"),
    ("budget huge", {"budget": 10**12}, "budget: Input should be less than or equal to"),
    ("unknown method", {"methods": ["sparse", "telepathy"]}, "unknown method(s) ['telepathy']"),
    ("method twice", {"methods": ["sparse", "sparse"]}, "listed twice"),
    ("no methods", {"methods": []}, "methods: List should have at least 1 item"),
    ("control arms without sparse", {"methods": ["red", "uniform"]}, "add 'sparse' to methods"),
    ("shapley unit bogus", {"inner": _inner(**{"shaping.options.shapley.unit": "bogus"})}, "unit"),
    (
        "shapley permutations negative",
        {"inner": _inner(**{"shaping.options.shapley.permutations": -5})},
        "permutations",
    ),
    (
        "lime samples a fraction",
        {"inner": _inner(**{"shaping.options.lime.num_samples": 2.5})},
        "num_samples",
    ),
    (
        "options of an unknown method",
        {"inner": _inner(**{"shaping.options.telepathy.x": 1})},
        "telepathy",
    ),
    ("unknown method option", {"inner": _inner(**{"shaping.options.red.colour": 1})}, "colour"),
    (
        "weights fixed in the spec",
        {"inner": _inner(**{"shaping.weights": {"sparse": 1.0}})},
        "inner.shaping.weights is what the study searches",
    ),
    (
        "response longer than the model",
        {"inner": _inner(**{"ppo.response_length": 100000})},
        ("ppo.response_length=100000 is longer than the models", "over this server's limit of"),
    ),
    (
        "response one past the model",
        {"inner": _inner(**{"ppo.response_length": 9})},
        "give at most 8",
    ),
    (
        "minibatch not dividing",
        {"inner": _inner(**{"ppo.minibatch": 3})},
        "must divide ppo.rollout_batch",
    ),
    ("unknown PPO field", {"inner": _inner(**{"ppo.learning_rate": 1})}, "learning_rate"),
    ("PPO not a mapping", {"inner": {"ppo": "fast"}}, "inner.ppo is a mapping"),
    ("steps a word", {"inner": _inner(steps="ten")}, "steps='ten' is invalid"),
    ("steps negative", {"inner": _inner(steps=-1)}, "steps=-1 is invalid"),
    ("threads a fraction", {"inner": _inner(torch_threads=1.5)}, "torch_threads=1.5 is invalid"),
    ("unknown inner field", {"inner": _inner(colour=1)}, "colour"),
    ("inner sets the seed", {"inner": _inner(seed=3)}, "inner.seed is set by the study"),
    ("device unknown", {"inner": _inner(device="tpu")}, "device='tpu' is invalid"),
    (
        "pruner with no evaluation before the end",
        {"pruner": "hyperband", "inner": _inner(eval_interval=4, steps=4)},
        "lower eval_interval, or set pruner: none",
    ),
    ("warm start from a missing study", {"warm_start": ["nowhere"]}, "no study 'nowhere'"),
    (
        "objectives not led by the objective",
        {"objectives": ["final", "gold"]},
        "objective (auc) first",
    ),
    ("gold on a task without a judge", {"objectives": ["auc", "gold"]}, "has no gold judge"),
    ("kl_max not positive", {"constraints": {"kl_max": -1}}, "constraints.kl_max"),
    ("noise without qnei", {"noise": "learned"}, "an option of sampler qnei"),
    ("sampler unknown", {"sampler": "oracle"}, "sampler"),
    ("executor unknown", {"executor": "bogus"}, "executor"),
    ("cpus zero", {"resources": {"cpus": 0}}, "resources.cpus"),
    ("gpus inline without CUDA", {"resources": {"gpus": 1}}, "no CUDA device"),
    ("name with a slash", {"name": "../../etc"}, "name: String should match pattern"),
    ("name huge", {"name": "x" * 100_000}, "chars)"),
    ("unknown field", {"colour": "blue"}, "colour: unknown field"),
    ("storage unknown dialect", {"storage": "postgresqlbogus://u@127.0.0.1/db"}, "storage"),
    ("storage in a file", {"storage": "sqlite:////dev/null/studies.db"}, "storage"),
    ("storage in memory", {"storage": "sqlite:///:memory:"}, "storage"),
]
CUDA_CASES = {
    "device cuda without CUDA": ({"inner": _inner(device="cuda")}, "CUDA is not available")
}


def _cases() -> Iterator[Any]:
    for case_id, fields, words in BAD_SPECS:
        yield pytest.param(fields, words, id=case_id)
    for case_id, (fields, words) in CUDA_CASES.items():
        yield pytest.param(
            fields,
            words,
            id=case_id,
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA"),
        )


def _no_traceback(output: str) -> None:
    assert "Traceback" not in output and "internal error" not in output, output


@pytest.mark.parametrize(("fields", "words"), list(_cases()))
def test_cli_refuses_a_bad_spec_with_exit_2_and_writes_nothing(
    fields: dict[str, Any], words: Words, make_spec: MakeSpec, tmp_path: Path
) -> None:
    words = words if isinstance(words, str) else words[0]
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(make_spec(**fields)))
    home = tmp_path / "home"
    result = runner.invoke(cli_app, ["run", str(spec_file), "--home", str(home)])
    _no_traceback(result.output)
    assert result.exit_code == 2, result.output
    assert words in " ".join(result.output.split()), result.output
    assert not home.exists() or not any(home.iterdir()), sorted(home.rglob("*"))
    assert len(result.output) < 4000, "an error quotes values in part, never whole"


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    home = tmp_path_factory.mktemp("api-home")
    settings = Settings(
        home=home,
        storage=f"sqlite:///{home / 'studies.db'}",
        token="w",
        executor="inline",
        coordinator=False,
    )
    with TestClient(create_app(settings), base_url="http://127.0.0.1/api/v1") as client:
        client.headers["Authorization"] = "Bearer w"
        yield client


@pytest.mark.parametrize(("fields", "words"), list(_cases()))
def test_api_refuses_a_bad_spec_with_422_and_queues_nothing(
    fields: dict[str, Any], words: Words, make_spec: MakeSpec, api: TestClient
) -> None:
    words = words if isinstance(words, str) else words[1]
    body = make_spec(**fields)
    text = json.dumps(body, allow_nan=True)  # NaN is refused by the parser: still a 422
    reply = api.post("/studies", content=text.encode())
    assert reply.status_code == 422, reply.text
    assert reply.json()["problems"], reply.text
    assert len(reply.text) < 4000
    if "storage" not in fields:  # a server refuses any storage, before its value is read
        assert words in " ".join(reply.json()["detail"].split()), reply.text
    assert api.get("/studies").json()["count"] == 0


BAD_TEXTS: list[tuple[str, bytes, str]] = [
    ("alias bomb", b"", "aliases are expanded"),  # filled in below
    ("nested 20000 deep", b"a: " + b"[" * 20_000 + b"]" * 20_000, "nested deeper than"),
    (
        "nested mappings",
        b"".join(b"  " * i + b"k:\n" for i in range(100)) + b"  " * 100 + b"v",
        "nested deeper than",
    ),
    (
        "duplicate key",
        b"name: a\nname: b\nmethods: [sparse]\nbudget: 1\n",
        "key 'name' is given twice",
    ),
    (
        "duplicate JSON key",
        b'{"name": "a", "budget": 1, "budget": 2, "methods": ["sparse"]}',
        "key 'budget' is given twice",
    ),
    ("not UTF-8", b"name: \xff\xfe\n", "not UTF-8"),
    ("a list", b"- 1\n- 2\n", "a spec is a mapping"),
    ("empty", b"", "a spec is a mapping"),
    ("not YAML", b"name: [unclosed\n", "not valid YAML/JSON"),
    ("too large", b"# " + b"x" * (2 << 20) + b"\n", "bytes is over"),
    ("a python tag", b"!!python/object/apply:os.system ['true']\n", "not valid YAML/JSON"),
    (
        "NaN in YAML",
        b"name: a\nmethods: [sparse]\nbudget: 1\nobjective: steps_to_target\ntarget: .nan\n",
        "finite number",
    ),
    ("a huge value", b"name: " + b"y" * 500_000 + b"\nmethods: [sparse]\nbudget: 1\n", "chars)"),
]
BILLION_LAUGHS = "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 9)
)
BAD_TEXTS[0] = ("alias bomb", BILLION_LAUGHS.encode(), "aliases are expanded")


@pytest.mark.parametrize(("text", "words"), [pytest.param(t, w, id=i) for i, t, w in BAD_TEXTS])
def test_cli_refuses_a_bad_spec_file(text: bytes, words: str, tmp_path: Path) -> None:
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_bytes(text)
    home = tmp_path / "home"
    result = runner.invoke(cli_app, ["run", str(spec_file), "--home", str(home)])
    _no_traceback(result.output)
    assert result.exit_code == 2, result.output
    assert words in " ".join(result.output.split()), result.output[:2000]
    assert len(result.output) < 4000
    assert not home.exists()


@pytest.mark.parametrize(
    ("text", "words"),
    [pytest.param(t, w, id=i) for i, t, w in BAD_TEXTS if i in ("duplicate JSON key",)],
)
def test_api_refuses_a_bad_body(text: bytes, words: str, api: TestClient) -> None:
    reply = api.post("/studies", content=text)
    assert reply.status_code == 422 and words in reply.text, reply.text


def test_spec_file_that_is_a_folder_or_missing(tmp_path: Path) -> None:
    for path, words in ((tmp_path, "does not exist"), (tmp_path / "nope.yaml", "does not exist")):
        result = runner.invoke(cli_app, ["run", str(path), "--home", str(tmp_path / "home")])
        _no_traceback(result.output)
        assert result.exit_code == 2 and words in " ".join(result.output.split()), result.output


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--executor", "bogus"], "unknown executor 'bogus'"),
        (["--storage", "postgresqlbogus://x@127.0.0.1/db"], "not a database URL"),
        (["--storage", "sqlite:////dev/null/no/studies.db"], "cannot create"),
        (["--storage", "mysql://x@127.0.0.1/db"], "mysql is not supported"),
        (
            ["--storage", "postgresql+psycopg2://x@127.0.0.1/db"],
            "driver (psycopg2) is not installed",
        ),
    ],
)
def test_cli_options_refused_before_anything_is_written(
    args: list[str], words: str, make_spec: MakeSpec, tmp_path: Path
) -> None:
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(make_spec()))
    home = tmp_path / "home"
    result = runner.invoke(cli_app, ["run", str(spec_file), "--home", str(home), *args])
    _no_traceback(result.output)
    assert result.exit_code == 2 and words in " ".join(result.output.split()), result.output
    assert not home.exists()


@pytest.mark.parametrize(
    "command", [["status", "x"], ["resume", "x"], ["cancel", "x"], ["reevaluate", "x"]]
)
def test_reading_commands_do_not_create_a_database(command: list[str], tmp_path: Path) -> None:
    result = runner.invoke(cli_app, [*command, "--home", str(tmp_path / "home")])
    _no_traceback(result.output)
    assert result.exit_code == 2 and "no study database" in result.output, result.output
    assert not (tmp_path / "home").exists()
