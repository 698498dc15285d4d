"""The service-owned tables. Trials, params and values are Optuna's; these hold what
Optuna does not: the submitted spec, the study's status, and the coordinator's lease.

Their schema changes only through a migration under `service/store/migrations/`."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, DateTime, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


STATUSES = ("queued", "running", "completed", "failed", "cancelling", "cancelled", "interrupted")


class StudyModel(Base):
    __tablename__ = "shapetune_studies"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    spec: Mapped[dict] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default="queued", index=True)
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
