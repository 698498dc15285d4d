"""The study spec refuses every malformed spec with the offending field named, before
anything is written."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from service.cli import app
from service.tuning.spec.model import SpecError, StudySpec, TaskSpec, load_spec, parse_spec

Spec = dict[str, Any]
INNER: dict[str, Any] = {
    "steps": 4,
    "eval_interval": 2,
    "ppo": {"rollout_batch": 8, "minibatch": 4},
}
runner = CliRunner()


def valid() -> Spec:
    return {
        "name": "s1",
        "task": {"name": "synthetic"},
        "methods": ["sparse", "uniform", "red"],
        "inner": json.loads(json.dumps(INNER)),
        "budget": 4,
    }


def with_(**fields: Any) -> Spec:
    return {**valid(), **fields}


def without(field: str) -> Spec:
    spec = valid()
    del spec[field]
    return spec


def inner(**fields: Any) -> Spec:
    return with_(inner={**INNER, **fields})


def inner_ppo(**fields: Any) -> Spec:
    return with_(inner={**INNER, "ppo": {**INNER["ppo"], **fields}})


# (case, spec, what the error must name): each spec has exactly one problem.
MALFORMED: list[tuple[str, Spec, list[str]]] = [
    ("unknown field", with_(colour="red"), ["colour", "unknown field"]),
    ("bad name", with_(name="my study!"), ["name", "my study!"]),
    ("empty name", with_(name=""), ["name"]),
    ("missing name", without("name"), ["name", "missing"]),
    ("unknown task", with_(task={"name": "chess"}), ["task.name", "chess", "synthetic"]),
    ("unknown task field", with_(task={"name": "synthetic", "opts": {}}), ["task.opts"]),
    ("unknown method", with_(methods=["sparse", "magic"]), ["methods", "magic", "shapley"]),
    ("duplicate method", with_(methods=["sparse", "red", "red"]), ["methods", "twice"]),
    ("empty methods", with_(methods=[]), ["methods"]),
    ("missing methods", without("methods"), ["methods", "missing"]),
    ("budget 0", with_(budget=0), ["budget", "greater than or equal to 1"]),
    ("budget not a number", with_(budget="ten"), ["budget", "ten"]),
    ("missing budget", without("budget"), ["budget", "missing"]),
    ("seeds 0", with_(seeds=0), ["seeds"]),
    ("unknown sampler", with_(sampler="cmaes"), ["sampler", "cmaes", "'gp'"]),
    ("unknown objective", with_(objective="median"), ["objective", "median", "'auc'"]),
    ("steps_to_target without target", with_(objective="steps_to_target"), ["target"]),
    ("unknown pruner", with_(pruner="asha"), ["pruner", "asha", "'hyperband'"]),
    ("pruner without an evaluation before the end", with_(pruner="hyperband", inner={**INNER, "eval_interval": 4}), ["pruner", "eval_interval=4", "steps=4"]),
    ("pruner on steps_to_target", with_(pruner="median", seeds=1, objective="steps_to_target", target=1.0), ["pruner", "objective"]),
    ("knob low >= high", with_(knobs={"kl_coef": {"low": 0.1, "high": 0.1}}), ["knobs.kl_coef", "low < high"]),
    ("knob not finite", with_(knobs={"kl_coef": {"low": 0, "high": float("inf")}}), ["knobs.kl_coef", "finite"]),
    ("log knob with low <= 0", with_(knobs={"lr": {"low": 0, "high": 1e-3, "log": True}}), ["knobs.lr", "log-scale", "low > 0"]),
    ("knob without high", with_(knobs={"lr": {"low": 1e-5}}), ["knobs.lr.high", "missing"]),
    ("unknown knob", with_(knobs={"entropy": {"low": 0, "high": 1}}), ["knobs", "entropy", "kl_coef"]),
    ("knob also set in inner.ppo", {**inner_ppo(kl_coef=0.1), "knobs": {"kl_coef": {"low": 0.01, "high": 0.2}}}, ["kl_coef", "inner.ppo.kl_coef"]),
    ("inner.shaping.weights set", inner(shaping={"weights": {"sparse": 1.0}}), ["inner.shaping.weights"]),
    ("inner.task set", inner(task={"name": "synthetic", "options": {"n_words": 8}}), ["inner.task", "task"]),
    ("inner.seed set", inner(seed=5), ["inner.seed", "seed"]),
    ("inner.shaping not a mapping", inner(shaping=5), ["inner", "shaping"]),
    ("minibatch not dividing rollout_batch", inner_ppo(minibatch=3), ["inner", "ppo.minibatch", "rollout_batch=8"]),
    ("inner.steps 0", inner(steps=0), ["inner", "steps=0"]),
    ("unknown inner key", inner(bogus=1), ["inner", "bogus", "valid fields"]),
    ("unknown inner.ppo key", inner_ppo(bogus=1), ["inner", "ppo", "bogus"]),
    ("unknown shaping option", inner(shaping={"options": {"shapley": {"colour": 1}}}), ["inner", "shaping.options.shapley", "colour"]),
    ("inner not a mapping", with_(inner=[1, 2]), ["inner", "dictionary"]),
    ("bad storage URL", with_(storage="mysql://root@localhost/db"), ["storage", "mysql://", "postgresql+psycopg"]),
    ("control arms without sparse", with_(methods=["uniform", "red"]), ["sparse", "control_arms"]),
    ("resources.cpus 0", with_(resources={"cpus": 0}), ["resources.cpus", "greater than 0"]),
    ("resources.gpus negative", with_(resources={"gpus": -1}), ["resources.gpus"]),
    ("unknown resource", with_(resources={"memory": 4}), ["resources.memory", "unknown field"]),
    ("unknown executor", with_(executor="dask"), ["executor", "dask"]),
    ("max_failures 0", with_(max_failures=0), ["max_failures"]),
    ("negative seed", with_(seed=-1), ["seed"]),
]  # fmt: skip


def test_the_base_spec_is_valid() -> None:
    """The malformed specs below are this one with one thing broken."""
    spec = parse_spec(valid())
    assert isinstance(spec, StudySpec)
    assert spec.methods == ["sparse", "uniform", "red"] and spec.budget == 4


def test_at_least_25_malformed_specs() -> None:
    assert len(MALFORMED) >= 25
    assert len({case for case, _, _ in MALFORMED}) == len(MALFORMED)


@pytest.mark.parametrize(
    ("spec", "named"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED]
)
def test_a_malformed_spec_names_the_offending_field(spec: Spec, named: list[str]) -> None:
    with pytest.raises(SpecError) as refused:
        parse_spec(spec)
    message = str(refused.value)
    assert refused.value.problems, message
    for word in named:
        assert word in message, f"{word!r} not in {message!r}"


def test_every_problem_of_a_spec_is_reported_at_once() -> None:
    spec = with_(
        name="bad name",
        methods=["sparse", "magic"],
        budget=0,
        seeds=0,
        sampler="cmaes",
        resources={"cpus": 0},
        knobs={"lr": {"low": 1, "high": 0}},
    )
    with pytest.raises(SpecError) as refused:
        parse_spec(spec)
    problems = refused.value.problems
    for field in ("name", "methods", "budget", "seeds", "sampler", "resources.cpus", "knobs.lr"):
        assert sum(p.startswith(f"{field}:") for p in problems) == 1, (field, problems)


def test_every_cross_field_problem_is_reported_at_once() -> None:
    spec = {
        **inner(shaping={"weights": {"sparse": 1.0}}, ppo={**INNER["ppo"], "kl_coef": 0.1}),
        "methods": ["uniform", "red"],
        "objective": "steps_to_target",
        "pruner": "median",
        "knobs": {"kl_coef": {"low": 0.01, "high": 0.2}},
    }
    with pytest.raises(SpecError) as refused:
        parse_spec(spec)
    problems = refused.value.problems
    named = (
        "control_arms",
        "target",
        "a pruner compares",
        "inner.ppo.kl_coef",
        "inner.shaping.weights",
    )
    for word in named:
        assert sum(word in p for p in problems) == 1, (word, problems)
    assert len(problems) >= len(named)


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("filename", "text", "named"),
    [
        ("list.yaml", "- name: s1\n- budget: 4\n", ["mapping", "list"]),
        ("scalar.yaml", "just words\n", ["mapping", "str"]),
        ("empty.yaml", "", ["mapping"]),
        ("broken.yaml", "name: s1\nmethods: [sparse, uniform\n", ["broken.yaml", "not valid YAML"]),
        ("tabs.yaml", "name: s1\n\tbudget: 4\n", ["tabs.yaml", "not valid YAML"]),
        ("bad.json", '{"name": "s1", "budget": 4', ["bad.json", "not valid YAML/JSON"]),
        ("field.json", json.dumps(with_(budget=0)), ["budget"]),
        ("field.yaml", yaml.safe_dump(with_(seeds=0, colour="x")), ["seeds", "colour"]),
    ],
)
def test_a_malformed_spec_file_is_refused(
    tmp_path: Path, filename: str, text: str, named: list[str]
) -> None:
    with pytest.raises(SpecError) as refused:
        load_spec(_write(tmp_path, filename, text))
    for word in named:
        assert word in str(refused.value), (word, str(refused.value))


def test_a_missing_spec_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"nope\.yaml.*does not exist"):
        load_spec(tmp_path / "nope.yaml")


def test_yaml_and_json_files_load_alike(tmp_path: Path) -> None:
    from_yaml = load_spec(_write(tmp_path, "s.yaml", yaml.safe_dump(valid())))
    from_json = load_spec(_write(tmp_path, "s.json", json.dumps(valid())))
    assert from_yaml == from_json == parse_spec(valid())


def _run(home: Path, spec_file: Path) -> Any:
    return runner.invoke(app, ["run", str(spec_file), "--home", str(home)])


def _written(home: Path) -> list[str]:
    return sorted(str(p.relative_to(home)) for p in home.rglob("*"))


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        (with_(budget=0, sampler="cmaes"), ["budget", "sampler"]),
        (with_(task={"name": "synthetic", "options": {"colour": 1}}), ["colour", "n_words"]),
        (with_(task={"name": "synthetic", "options": {"n_words": 1}}), ["n_words=1"]),
    ],
    ids=["bad fields", "unknown task option", "bad task option"],
)
def test_run_refuses_a_bad_spec_and_writes_nothing(
    tmp_path: Path, spec: Spec, named: list[str]
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    spec_file = _write(tmp_path, "bad.yaml", yaml.safe_dump(spec))
    result = _run(home, spec_file)
    assert result.exit_code == 2, result.output
    for word in named:
        assert word in result.output
    assert _written(home) == []


def test_run_refuses_an_unprepared_task_with_the_fix_and_writes_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    spec = with_(task={"name": "imdb-sentiment", "options": {"size": "tiny"}})
    result = _run(home, _write(tmp_path, "imdb.yaml", yaml.safe_dump(spec)))
    assert result.exit_code == 2, result.output
    assert "shapetune prepare" in result.output
    assert _written(home) == []


def test_run_refuses_a_study_name_taken_by_another_spec(
    tmp_path: Path, make_spec: Callable[..., Spec]
) -> None:
    """`run` of a name already in the store with another spec points to `resume` instead."""
    from service.store.db import default_url
    from service.store.studies import create_study, get_study

    home = tmp_path / "home"
    first = parse_spec(make_spec(budget=5)).model_dump(mode="json")
    create_study(default_url(home), first["name"], first)
    result = _run(home, _write(tmp_path, "again.yaml", yaml.safe_dump(make_spec(budget=4))))
    assert result.exit_code == 2, result.output
    assert f"shapetune resume {first['name']}" in " ".join(result.output.split())
    assert get_study(default_url(home), first["name"]).spec == first


EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_the_example_specs_are_valid(path: Path) -> None:
    """The README's specs (the demo's first) parse, and the inner runs at both ends of every
    knob build, their method options checked by the methods themselves."""
    from service.tuning.spec.model import corner_configs

    spec = load_spec(path)
    assert spec.name == path.stem
    for config in corner_configs(spec):
        assert set(config.shaping.options) <= set(spec.methods)


def test_the_inner_run_is_built_once_and_each_trial_changes_only_its_own() -> None:
    """`spec.base` is the inner run as the spec sets it, typed by the trainer's config; a
    trial's run is it with the trial's weights, knobs and seed; a copy of the spec with
    another task builds its own."""
    spec = parse_spec(
        {
            "name": "typed",
            "task": {"name": "synthetic"},
            "methods": ["sparse", "amortized"],
            "knobs": {
                "kl_coef": {"low": 0.01, "high": 0.1},
                "amortized.prior": {"low": 0.5, "high": 2.0},
            },
            "inner": {
                "steps": 6,
                "ppo": {"lr": 1e-4},
                "shaping": {"options": {"amortized": {"pairs": 2}}},
            },
            "budget": 3,
            "executor": "inline",
        }
    )
    assert spec.base is spec.base and spec.base.steps == 6 and spec.base.ppo.lr == 1e-4
    run = spec.train_config(
        {"sparse": 0.25, "amortized": 0.75}, {"kl_coef": 0.05, "amortized.prior": 1.5}, 7
    )
    assert run.seed == 7 and run.steps == 6 and run.ppo.lr == 1e-4 and run.ppo.kl_coef == 0.05
    assert run.shaping.weights == {"sparse": 0.25, "amortized": 0.75}
    assert run.shaping.options["amortized"] == {"pairs": 2, "prior": 1.5}
    assert spec.base.shaping.options["amortized"] == {"pairs": 2}  # the base is unchanged
    other = spec.model_copy(update={"task": TaskSpec(name="synthetic", options={"n_words": 24})})
    assert other.base.task.options == {"n_words": 24} and spec.base.task.options == {}
