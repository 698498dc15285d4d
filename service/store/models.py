"""The service-owned tables. Trials, params and values are Optuna's; these hold what
Optuna does not: the submitted spec, the study's status, the coordinator's lease, and the
index of the files the trials' inner runs left behind.

Their schema changes only through a migration under `service/store/migrations/`."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import JSON, BigInteger, DateTime, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class StudyStatus(StrEnum):
    """Where a study is. queued -> running -> completed | failed | interrupted; a cancel
    turns queued or interrupted into cancelled at once, running into cancelling until its
    coordinator stops it; a resume queues an interrupted or cancelled study again."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"


STOPPING = (StudyStatus.CANCELLING, StudyStatus.CANCELLED)
"""A study in these has been told to stop: its inner runs end at their next check."""
LIVE = (StudyStatus.QUEUED, StudyStatus.RUNNING, StudyStatus.CANCELLING)
"""Studies that will still change by themselves."""


class StudyModel(Base):
    __tablename__ = "shapetune_studies"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    spec: Mapped[dict] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default=StudyStatus.QUEUED, index=True)
    owner: Mapped[str] = mapped_column(String(128), default="")
    message: Mapped[str] = mapped_column(Text, default="")
    """Why the study failed or stopped, for people."""
    created_at: Mapped[datetime] = mapped_column(DateTime(), index=True)
    """Naive UTC everywhere: SQLite keeps no time zone."""
    updated_at: Mapped[datetime] = mapped_column(DateTime())


class LeaseModel(Base):
    """Who coordinates a study, until when. A coordinator renews its lease while it runs;
    once it lapses (the process died) another may take the study over."""

    __tablename__ = "shapetune_leases"

    study_name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[datetime] = mapped_column(DateTime())


class ArtifactModel(Base):
    """A file an inner run left on its worker: its checkpoint (policy, value head, optimizer,
    RNG states: `trainers.checkpoint`) and its result. The files stay where the worker wrote
    them; this says where, on which host, and how large, so nobody has to search for them."""

    __tablename__ = "shapetune_artifacts"
    __table_args__ = (
        UniqueConstraint("study_name", "trial_number", "seed_index", "kind", name="uq_artifact"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_name: Mapped[str] = mapped_column(String(64), index=True)
    trial_number: Mapped[int] = mapped_column(Integer)
    seed_index: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(32))
    host: Mapped[str] = mapped_column(String(255))
    path: Mapped[str] = mapped_column(Text)
    bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime())
