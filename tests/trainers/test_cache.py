import json
from pathlib import Path

import pytest

from trainers.tasks import cache


def _writer(calls: list[int], payload: str = "weights"):
    def build(out: Path) -> dict:
        calls.append(1)
        (out / "model.bin").write_text(payload)
        (out / "sub").mkdir()
        (out / "sub" / "tok.json").write_text("{}")
        return {"metric": 0.5}

    return build


def test_builds_then_reuses(tmp_path: Path) -> None:
    calls: list[int] = []
    first = cache.cached_stage(tmp_path, "stage", {"a": 1}, _writer(calls))
    second = cache.cached_stage(tmp_path, "stage", {"a": 1}, _writer(calls))
    assert first.built and not second.built
    assert len(calls) == 1
    assert second.info["metric"] == 0.5
    assert (tmp_path / "stage" / "model.bin").read_text() == "weights"


def test_rebuilds_when_key_changes(tmp_path: Path) -> None:
    calls: list[int] = []
    cache.cached_stage(tmp_path, "stage", {"a": 1}, _writer(calls))
    record = cache.cached_stage(tmp_path, "stage", {"a": 2}, _writer(calls, "new"))
    assert record.built and len(calls) == 2
    assert (tmp_path / "stage" / "model.bin").read_text() == "new"


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: (d / "model.bin").write_text("corrupted"),
        lambda d: (d / "sub" / "tok.json").unlink(),
        lambda d: (d / "extra.txt").write_text("stray"),
        lambda d: (d / cache.RECORD).unlink(),
        lambda d: (d / cache.RECORD).write_text("{not json"),
    ],
    ids=["corrupt-file", "missing-file", "extra-file", "no-record", "bad-record"],
)
def test_damaged_cache_is_detected_and_rebuilt(tmp_path: Path, damage) -> None:
    calls: list[int] = []
    cache.cached_stage(tmp_path, "stage", {"a": 1}, _writer(calls))
    damage(tmp_path / "stage")
    valid, reason = cache.verify_stage(tmp_path / "stage")
    assert not valid and reason
    record = cache.cached_stage(tmp_path, "stage", {"a": 1}, _writer(calls))
    assert record.built and len(calls) == 2
    assert cache.verify_stage(tmp_path / "stage") == (True, "valid")


def test_interrupted_build_leaves_no_finished_looking_folder(tmp_path: Path) -> None:
    def crash(out: Path) -> dict:
        (out / "model.bin").write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache.cached_stage(tmp_path, "stage", {"a": 1}, crash)
    assert not (tmp_path / "stage").exists()
    calls: list[int] = []
    assert cache.cached_stage(tmp_path, "stage", {"a": 1}, _writer(calls)).built


def test_record_names_versions_and_hashes(tmp_path: Path) -> None:
    cache.cached_stage(tmp_path, "stage", {"a": 1}, _writer([]))
    record = json.loads((tmp_path / "stage" / cache.RECORD).read_text())
    assert set(record["files"]) == {"model.bin", "sub/tok.json"}
    assert record["versions"]["torch"] != "absent"
    assert record["key"] == {"a": 1}


def test_a_reward_model_file_is_hashed_once_while_it_is_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The explainer's key hashes the RM's files on every run; a worker running many trials
    on one multi-GB RM hashes each once, and again when the file changes."""
    from trainers import explainer

    hashed: list[Path] = []
    real = explainer.file_sha256
    monkeypatch.setattr(explainer, "file_sha256", lambda p: hashed.append(p) or real(p))
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"weights")
    first = explainer.file_hash(weights)
    assert explainer.file_hash(weights) == first and len(hashed) == 1
    weights.write_bytes(b"other weights")
    assert explainer.file_hash(weights) != first and len(hashed) == 2
