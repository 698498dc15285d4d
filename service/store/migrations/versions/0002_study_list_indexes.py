"""Indexes for the paged study list: newest first, optionally of one status.

Revision ID: 0002
Revises: 0001
Create Date: 2026-01-02
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_shapetune_studies_status", "shapetune_studies", ["status"])
    op.create_index("ix_shapetune_studies_created_at", "shapetune_studies", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_shapetune_studies_created_at", table_name="shapetune_studies")
    op.drop_index("ix_shapetune_studies_status", table_name="shapetune_studies")
