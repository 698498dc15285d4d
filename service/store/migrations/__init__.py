"""Alembic migrations of the service-owned tables (`shapetune_*`)."""
