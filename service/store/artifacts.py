"""Queries on the artifacts index: the files each inner run left on its worker."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, func, select

from service.store.db import session_scope
from service.store.models import ArtifactModel
from service.store.studies import utcnow


def record_artifacts(
    url: str, study: str, trial: int, seed_index: int, host: str, files: Sequence[dict[str, Any]]
) -> None:
    """Index `files` ({kind, path, bytes}) of one inner run, replacing what an earlier
    attempt of the same run recorded, in one transaction."""
    now = utcnow()
    with session_scope(url) as s:
        s.execute(
            delete(ArtifactModel).where(
                ArtifactModel.study_name == study,
                ArtifactModel.trial_number == trial,
                ArtifactModel.seed_index == seed_index,
            )
        )
        s.add_all(
            ArtifactModel(
                study_name=study,
                trial_number=trial,
                seed_index=seed_index,
                kind=f["kind"],
                host=host,
                path=f["path"],
                bytes=int(f["bytes"]),
                created_at=now,
            )
            for f in files
        )


def checkpoint_host(url: str, study: str, path: str) -> str | None:
    """The host that wrote the checkpoint at `path` for `study`, if the index has it."""
    query = select(ArtifactModel.host).where(
        ArtifactModel.study_name == study,
        ArtifactModel.kind == "checkpoint",
        ArtifactModel.path == path,
    )
    with session_scope(url) as s:
        return s.scalars(query.limit(1)).first()


def page_artifacts(
    url: str, study: str, trial: int | None = None, offset: int = 0, limit: int = 100
) -> tuple[list[ArtifactModel], int]:
    """One page of a study's artifacts (or one trial's) by trial, seed and kind, and how
    many there are in all."""
    query = select(ArtifactModel).where(ArtifactModel.study_name == study)
    if trial is not None:
        query = query.where(ArtifactModel.trial_number == trial)
    with session_scope(url) as s:
        count = s.scalar(select(func.count()).select_from(query.subquery())) or 0
        page = s.scalars(
            query.order_by(ArtifactModel.trial_number, ArtifactModel.seed_index, ArtifactModel.kind)
            .offset(offset)
            .limit(limit)
        )
        return list(page), count
