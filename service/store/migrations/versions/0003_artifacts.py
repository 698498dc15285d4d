"""The artifacts index: where each inner run's checkpoint and result lie.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "shapetune_artifacts",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("study_name", sa.String(64), nullable=False),
        sa.Column("trial_number", sa.Integer(), nullable=False),
        sa.Column("seed_index", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("study_name", "trial_number", "seed_index", "kind", name="uq_artifact"),
    )
    op.create_index("ix_shapetune_artifacts_study_name", "shapetune_artifacts", ["study_name"])


def downgrade() -> None:
    op.drop_index("ix_shapetune_artifacts_study_name", table_name="shapetune_artifacts")
    op.drop_table("shapetune_artifacts")
