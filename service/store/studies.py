"""Queries on the service's study records and leases. Routes and commands call these;
none of them writes SQL of its own."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    CursorResult,
    delete,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from service.store.db import StoreError, session_scope
from service.store.models import LeaseModel, StudyModel, StudyStatus


class StudyExists(StoreError):
    pass


class StudyNotFound(StoreError):
    pass


class StudyStateError(StoreError):
    """The study is in a state that does not allow the request (e.g. resuming a running one)."""


RESUMABLE = (StudyStatus.INTERRUPTED, StudyStatus.CANCELLED)
TAKEN_OVER = (StudyStatus.RUNNING, StudyStatus.CANCELLING)
"""Statuses of a study whose coordinator, if its lease lapsed, died mid-run."""


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def create_study(url: str, name: str, spec: dict[str, Any], owner: str = "") -> StudyModel:
    now = utcnow()
    record = StudyModel(
        name=name,
        spec=spec,
        status=StudyStatus.QUEUED,
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


def page_studies(
    url: str,
    status: str | None = None,
    offset: int = 0,
    limit: int | None = 100,
    owner: str | None = None,
) -> tuple[list[StudyModel], int]:
    """One page of studies (of one status, of one owner), newest first, and how many there
    are in all."""
    query = select(StudyModel)
    if status:
        query = query.where(StudyModel.status == status)
    if owner is not None:
        query = query.where(StudyModel.owner == owner)
    with session_scope(url) as s:
        count = s.scalar(select(func.count()).select_from(query.subquery())) or 0
        page = s.scalars(
            query.order_by(StudyModel.created_at.desc(), StudyModel.name)
            .offset(offset)
            .limit(limit)
        )
        return list(page), count


def claimable_studies(url: str) -> list[str]:
    """Studies a coordinator should drive, oldest first: those queued, then those whose
    coordinator died (running or cancelling, with no lease or a lapsed one). A study that was
    interrupted on purpose or by an error waits for a resume (which queues it again)."""
    lapsed = or_(LeaseModel.study_name.is_(None), LeaseModel.expires_at < utcnow())
    query = (
        select(StudyModel.name)
        .outerjoin(LeaseModel, LeaseModel.study_name == StudyModel.name)
        .where(
            or_(
                StudyModel.status == StudyStatus.QUEUED,
                StudyModel.status.in_(TAKEN_OVER) & lapsed,
            )
        )
        .order_by((StudyModel.status != StudyStatus.QUEUED), StudyModel.created_at)
    )
    with session_scope(url) as s:
        return list(s.scalars(query))


def requeue(url: str, name: str) -> str:
    """Queue an interrupted or cancelled study again, for a coordinator to continue."""
    with session_scope(url) as s:
        result: CursorResult[Any] = s.execute(  # type: ignore[assignment]
            update(StudyModel)
            .where(StudyModel.name == name, StudyModel.status.in_(RESUMABLE))
            .values(status=StudyStatus.QUEUED, message="resume requested", updated_at=utcnow())
        )
    if result.rowcount:
        return StudyStatus.QUEUED
    status = get_study(url, name).status  # raises StudyNotFound
    if status in (StudyStatus.QUEUED, StudyStatus.RUNNING):
        return status  # already on its way: resuming twice is not an error
    raise StudyStateError(
        f"study {name!r} is {status}; only an interrupted or cancelled study can be resumed"
    )


def set_status(
    url: str,
    name: str,
    status: str,
    message: str | None = None,
    unless: tuple[str, ...] = (),
) -> None:
    """Set a study's status, in one UPDATE that leaves it alone if it is one of `unless`
    (so a status written concurrently, a cancel say, is not overwritten)."""
    values: dict[str, Any] = {"status": status, "updated_at": utcnow()}
    if message is not None:
        values["message"] = message
    query = update(StudyModel).where(StudyModel.name == name)
    if unless:
        query = query.where(StudyModel.status.not_in(unless))
    with session_scope(url) as s:
        s.execute(query.values(**values))


def request_cancel(url: str, name: str) -> str:
    """Mark a study for cancellation; its coordinator stops it. Returns the new status."""
    record = get_study(url, name)
    if record.status in (StudyStatus.COMPLETED, StudyStatus.FAILED, StudyStatus.CANCELLED):
        return record.status
    status = (
        StudyStatus.CANCELLED
        if record.status in (StudyStatus.QUEUED, StudyStatus.INTERRUPTED)
        else StudyStatus.CANCELLING
    )
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
