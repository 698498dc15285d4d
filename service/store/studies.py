"""Queries on the service's study records and leases. Routes and commands call these;
none of them writes SQL of its own."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import CursorResult, delete, select, update
from sqlalchemy.exc import IntegrityError

from service.store.db import StoreError, session_scope
from service.store.models import LeaseModel, StudyModel


class StudyExists(StoreError):
    pass


class StudyNotFound(StoreError):
    pass


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def create_study(url: str, name: str, spec: dict[str, Any], owner: str = "") -> StudyModel:
    now = utcnow()
    record = StudyModel(
        name=name,
        spec=spec,
        status="queued",
        owner=owner,
        message="",
        created_at=now,
        updated_at=now,
    )
    try:
        with session_scope(url) as s:
            s.add(record)
            s.flush()
    except StoreError as e:
        if isinstance(e.__cause__, IntegrityError):
            raise StudyExists(
                f"a study named {name!r} exists; resume it with `shapetune resume {name}`, "
                "or give the spec another name"
            ) from None
        raise
    return record


def get_study(url: str, name: str) -> StudyModel:
    with session_scope(url) as s:
        record = s.get(StudyModel, name)
    if record is None:
        raise StudyNotFound(
            f"no study named {name!r} in this database (`shapetune status` lists them)"
        )
    return record


def list_studies(url: str, status: str | None = None) -> list[StudyModel]:
    query = select(StudyModel).order_by(StudyModel.created_at.desc())
    if status:
        query = query.where(StudyModel.status == status)
    with session_scope(url) as s:
        return list(s.scalars(query))


def set_status(url: str, name: str, status: str, message: str | None = None) -> None:
    values: dict[str, Any] = {"status": status, "updated_at": utcnow()}
    if message is not None:
        values["message"] = message
    with session_scope(url) as s:
        s.execute(update(StudyModel).where(StudyModel.name == name).values(**values))


def request_cancel(url: str, name: str) -> str:
    """Mark a study for cancellation; its coordinator stops it. Returns the new status."""
    record = get_study(url, name)
    if record.status in ("completed", "failed", "cancelled"):
        return record.status
    status = "cancelled" if record.status in ("queued", "interrupted") else "cancelling"
    set_status(url, name, status, "cancelled by request")
    return status


def acquire_lease(url: str, study: str, holder: str, ttl_s: float) -> bool:
    """Take or renew the study's coordinator lease: True if `holder` has it now.

    One conditional UPDATE (or the INSERT of a first lease) decides, so two coordinators
    racing for a lapsed lease cannot both win, on SQLite or PostgreSQL.
    """
    now = utcnow()
    expires = now + timedelta(seconds=ttl_s)
    with session_scope(url) as s:
        result: CursorResult[Any] = s.execute(  # type: ignore[assignment]
            update(LeaseModel)
            .where(LeaseModel.study_name == study)
            .where((LeaseModel.holder == holder) | (LeaseModel.expires_at < now))
            .values(holder=holder, expires_at=expires)
        )
    if result.rowcount:
        return True
    try:
        with session_scope(url) as s:
            s.add(LeaseModel(study_name=study, holder=holder, expires_at=expires))
    except StoreError as e:
        if isinstance(e.__cause__, IntegrityError):
            return False  # a live lease of someone else's
        raise
    return True


def release_lease(url: str, study: str, holder: str) -> None:
    with session_scope(url) as s:
        s.execute(
            delete(LeaseModel).where(LeaseModel.study_name == study, LeaseModel.holder == holder)
        )


def lease_holder(url: str, study: str) -> tuple[str, datetime] | None:
    with session_scope(url) as s:
        lease = s.get(LeaseModel, study)
    return (lease.holder, lease.expires_at) if lease else None
