"""Label quality: an overlap cap, gold answers and side-swapped repeats per comparison.

Revision ID: 0002_label_quality
Revises: 0001
Create Date: 2026-12-01

One new table, ``comparison_quality`` (at most one row per comparison), so the
existing tables stay as they were and votes stay append-only:

- ``overlap``: how many annotators may vote on an open comparison (each pair
  shown to k annotators); NULL is no cap;
- ``gold``: the known answer (``a``, ``b`` or ``tie``) of a gold pair mixed
  into the queues, to measure each annotator's accuracy;
- ``repeat_of_id``: the comparison this one repeats with the sides swapped
  (position bias and self-consistency of each annotator).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_label_quality"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "comparison_quality",
        sa.Column("comparison_id", sa.Integer(), nullable=False),
        sa.Column("overlap", sa.Integer(), nullable=True),
        sa.Column("gold", sa.String(length=8), nullable=True),
        sa.Column("repeat_of_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.CheckConstraint("overlap IS NULL OR overlap >= 1", name=op.f("ck_comparison_quality_overlap_positive")),
        sa.CheckConstraint("gold IS NULL OR gold IN ('a', 'b', 'tie')", name=op.f("ck_comparison_quality_gold")),
        sa.CheckConstraint(
            "repeat_of_id IS NULL OR repeat_of_id <> comparison_id", name=op.f("ck_comparison_quality_not_self")
        ),
        sa.ForeignKeyConstraint(
            ["comparison_id"], ["comparisons.id"], name=op.f("fk_comparison_quality_comparison_id_comparisons")
        ),
        sa.ForeignKeyConstraint(
            ["repeat_of_id"], ["comparisons.id"], name=op.f("fk_comparison_quality_repeat_of_id_comparisons")
        ),
        sa.PrimaryKeyConstraint("comparison_id", name=op.f("pk_comparison_quality")),
    )
    op.create_index(
        op.f("ix_comparison_quality_repeat_of_id"), "comparison_quality", ["repeat_of_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_comparison_quality_repeat_of_id"), table_name="comparison_quality")
    op.drop_table("comparison_quality")
