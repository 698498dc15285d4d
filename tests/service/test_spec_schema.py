import json
from pathlib import Path

from service.tuning.spec.model import json_schema, load_spec

ROOT = Path(__file__).resolve().parents[2]


def test_the_published_schema_is_current() -> None:
    """docs/study-spec.schema.json is what users validate against: regenerate it with
    `shapetune schema > docs/study-spec.schema.json` when the spec changes."""
    published = json.loads((ROOT / "docs" / "study-spec.schema.json").read_text())
    assert published == json_schema()


def test_the_example_specs_are_valid() -> None:
    specs = sorted((ROOT / "examples").glob("*.yaml"))
    assert specs
    for path in specs:
        assert load_spec(path).name


def test_the_schema_checks_an_inner_run_as_the_trainer_does() -> None:
    """An editor validating against the published schema sees the inner run's fields and
    types, and the fields the study sets itself refused."""
    import jsonschema
    import yaml

    checker = jsonschema.Draft202012Validator(json_schema())
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        assert not list(checker.iter_errors(yaml.safe_load(path.read_text()))), path
    base = {"name": "s", "methods": ["sparse"], "budget": 1}
    for inner in (
        {"steps": True},
        {"steps": "3"},
        {"seed": 3},
        {"stepz": 3},
        {"ppo": {"lrr": 1e-4}},
        {"shaping": {"weights": {"sparse": 1.0}}},
    ):
        assert list(checker.iter_errors({**base, "inner": inner})), inner
    good = {"steps": 8, "ppo": {"lr": 1e-4}, "shaping": {"options": {"shapley": {"unit": "span"}}}}
    assert not list(checker.iter_errors({**base, "inner": good}))
