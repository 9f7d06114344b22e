"""Prompt sets (stored once by hash, reusable by name) and sweeps (a table of cells, each linked to its run).

Revision ID: 0003_sweeps
Revises: 0002_label_quality
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_sweeps"
down_revision = "0002_label_quality"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "prompt_sets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("columns", sa.JSON(), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=True),
        sa.Column("reward", sa.String(length=200), nullable=True),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_prompt_sets")),
        sa.UniqueConstraint("name", name=op.f("uq_prompt_sets_name")),
        sa.UniqueConstraint("sha256", name=op.f("uq_prompt_sets_sha256")),
    )
    op.create_table(
        "prompt_set_items",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("set_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("prompt_id", sa.Integer(), nullable=False),
        sa.Column("answer", sa.Text(), nullable=True),
        sa.Column("system", sa.Text(), nullable=True),
        sa.Column("chat", sa.Boolean(), nullable=False),
        sa.Column("meta", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["prompt_id"], ["prompts.id"], name=op.f("fk_prompt_set_items_prompt_id_prompts")),
        sa.ForeignKeyConstraint(["set_id"], ["prompt_sets.id"], name=op.f("fk_prompt_set_items_set_id_prompt_sets")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_prompt_set_items")),
        sa.UniqueConstraint("set_id", "position", name=op.f("uq_prompt_set_items_set_id_position")),
    )
    op.create_index(op.f("ix_prompt_set_items_prompt_id"), "prompt_set_items", ["prompt_id"], unique=False)
    op.create_table(
        "sweeps",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("title", sa.String(length=200), nullable=True),
        sa.Column("prompt_set_id", sa.Integer(), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("cells_planned", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["prompt_set_id"], ["prompt_sets.id"], name=op.f("fk_sweeps_prompt_set_id_prompt_sets")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sweeps")),
    )
    op.create_index(op.f("ix_sweeps_created_at"), "sweeps", ["created_at"], unique=False)
    op.create_index(op.f("ix_sweeps_prompt_set_id"), "sweeps", ["prompt_set_id"], unique=False)
    op.create_table(
        "sweep_cells",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sweep_id", sa.Integer(), nullable=False),
        sa.Column("arm", sa.String(length=200), nullable=False),
        sa.Column("level", sa.Float(), nullable=False),
        sa.Column("prompt_index", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("engine", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("quality", sa.Float(), nullable=True),
        sa.Column("steer", sa.Float(), nullable=True),
        sa.Column("cost", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_sweep_cells_run_id_runs")),
        sa.ForeignKeyConstraint(["sweep_id"], ["sweeps.id"], name=op.f("fk_sweep_cells_sweep_id_sweeps")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sweep_cells")),
        sa.UniqueConstraint("sweep_id", "arm", "level", "prompt_index",
                            name=op.f("uq_sweep_cells_sweep_id_arm_level_prompt_index")),
    )
    op.create_index(op.f("ix_sweep_cells_run_id"), "sweep_cells", ["run_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_sweep_cells_run_id"), table_name="sweep_cells")
    op.drop_table("sweep_cells")
    op.drop_index(op.f("ix_sweeps_prompt_set_id"), table_name="sweeps")
    op.drop_index(op.f("ix_sweeps_created_at"), table_name="sweeps")
    op.drop_table("sweeps")
    op.drop_index(op.f("ix_prompt_set_items_prompt_id"), table_name="prompt_set_items")
    op.drop_table("prompt_set_items")
    op.drop_table("prompt_sets")
