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
