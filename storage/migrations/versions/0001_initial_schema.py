"""Initial schema: annotators, sessions, prompts, runs, events, candidates,
comparisons, assignments and append-only votes.

Revision ID: 0001
Revises:
Create Date: 2026-11-26

Besides the tables, this installs triggers that abort any UPDATE or DELETE on
``votes`` (SQLite and PostgreSQL): votes are append-only, a correction is a
new row that supersedes the old one.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

APPEND_ONLY = "votes are append-only: record a new vote that supersedes this one"

SQLITE_TRIGGERS = [
    f"""CREATE TRIGGER votes_no_update BEFORE UPDATE ON votes
        BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY}'); END""",
    f"""CREATE TRIGGER votes_no_delete BEFORE DELETE ON votes
        BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY}'); END""",
]

POSTGRES_TRIGGERS = [
    f"""CREATE FUNCTION votes_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION '{APPEND_ONLY}' USING ERRCODE = 'restrict_violation'; END $$""",
    """CREATE TRIGGER votes_no_update_delete BEFORE UPDATE OR DELETE ON votes
        FOR EACH ROW EXECUTE FUNCTION votes_append_only()""",
    """CREATE TRIGGER votes_no_truncate BEFORE TRUNCATE ON votes
        FOR EACH STATEMENT EXECUTE FUNCTION votes_append_only()""",
]


def _install_triggers() -> None:
    dialect = op.get_bind().dialect.name
    statements = {"sqlite": SQLITE_TRIGGERS, "postgresql": POSTGRES_TRIGGERS}.get(dialect, [])
    for statement in statements:
        op.execute(statement)


def _drop_triggers() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS votes_no_update")
        op.execute("DROP TRIGGER IF EXISTS votes_no_delete")
    elif dialect == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS votes_no_update_delete ON votes")
        op.execute("DROP TRIGGER IF EXISTS votes_no_truncate ON votes")
        op.execute("DROP FUNCTION IF EXISTS votes_append_only()")


def upgrade() -> None:
    op.create_table(
        "annotators",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_annotators")),
        sa.UniqueConstraint("name", name=op.f("uq_annotators_name")),
    )
    op.create_table(
        "prompts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_prompts")),
        sa.UniqueConstraint("sha256", name=op.f("uq_prompts_sha256")),
    )
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("prompt_id", sa.Integer(), nullable=False),
        sa.Column("title", sa.String(length=200), nullable=True),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("reward", sa.String(length=200), nullable=False),
        sa.Column("sampler", sa.String(length=200), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("task", sa.JSON(), nullable=False),
        sa.Column("cost", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["prompt_id"], ["prompts.id"], name=op.f("fk_runs_prompt_id_prompts")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runs")),
    )
    op.create_index(op.f("ix_runs_created_at"), "runs", ["created_at"], unique=False)
    op.create_index(op.f("ix_runs_model"), "runs", ["model"], unique=False)
    op.create_index(op.f("ix_runs_prompt_id"), "runs", ["prompt_id"], unique=False)
    op.create_index(op.f("ix_runs_reward"), "runs", ["reward"], unique=False)
    op.create_index(op.f("ix_runs_sampler"), "runs", ["sampler"], unique=False)

    op.create_table(
        "sessions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("annotator_id", sa.Integer(), nullable=False),
        sa.Column("client", sa.String(length=200), nullable=True),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["annotator_id"], ["annotators.id"], name=op.f("fk_sessions_annotator_id_annotators")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sessions")),
    )
    op.create_index(op.f("ix_sessions_annotator_id"), "sessions", ["annotator_id"], unique=False)

    op.create_table(
        "candidates",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("node_id", sa.String(length=200), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("image", sa.Text(), nullable=True),
        sa.Column("reward", sa.Float(), nullable=True),
        sa.Column("tokens", sa.Integer(), nullable=False),
        sa.Column("picked", sa.Boolean(), nullable=False),
        sa.Column("meta", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_candidates_run_id_runs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_candidates")),
        sa.UniqueConstraint("run_id", "node_id", name=op.f("uq_candidates_run_id_node_id")),
    )
    op.create_table(
        "events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_events_run_id_runs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
        sa.UniqueConstraint("run_id", "seq", name=op.f("uq_events_run_id_seq")),
    )
    op.create_table(
        "comparisons",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("prompt_id", sa.Integer(), nullable=False),
        sa.Column("candidate_a_id", sa.Integer(), nullable=False),
        sa.Column("candidate_b_id", sa.Integer(), nullable=False),
        sa.Column("left_side", sa.String(length=1), nullable=False),
        sa.Column("blind", sa.Boolean(), nullable=False),
        sa.Column("strategy", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.CheckConstraint("left_side IN ('a', 'b')", name=op.f("ck_comparisons_left_side")),
        sa.CheckConstraint(
            "candidate_a_id <> candidate_b_id", name=op.f("ck_comparisons_distinct_candidates")
        ),
        sa.ForeignKeyConstraint(
            ["candidate_a_id"], ["candidates.id"], name=op.f("fk_comparisons_candidate_a_id_candidates")
        ),
        sa.ForeignKeyConstraint(
            ["candidate_b_id"], ["candidates.id"], name=op.f("fk_comparisons_candidate_b_id_candidates")
        ),
        sa.ForeignKeyConstraint(["prompt_id"], ["prompts.id"], name=op.f("fk_comparisons_prompt_id_prompts")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_comparisons")),
    )
    op.create_index(op.f("ix_comparisons_candidate_a_id"), "comparisons", ["candidate_a_id"], unique=False)
    op.create_index(op.f("ix_comparisons_candidate_b_id"), "comparisons", ["candidate_b_id"], unique=False)
    op.create_index(op.f("ix_comparisons_prompt_id"), "comparisons", ["prompt_id"], unique=False)

    op.create_table(
        "assignments",
        sa.Column("comparison_id", sa.Integer(), nullable=False),
        sa.Column("annotator_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["annotator_id"], ["annotators.id"], name=op.f("fk_assignments_annotator_id_annotators")
        ),
        sa.ForeignKeyConstraint(
            ["comparison_id"], ["comparisons.id"], name=op.f("fk_assignments_comparison_id_comparisons")
        ),
        sa.PrimaryKeyConstraint("comparison_id", "annotator_id", name=op.f("pk_assignments")),
    )
    op.create_table(
        "votes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("comparison_id", sa.Integer(), nullable=False),
        sa.Column("annotator_id", sa.Integer(), nullable=False),
        sa.Column("session_id", sa.Integer(), nullable=True),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("supersedes_id", sa.Integer(), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("rationale", sa.Text(), nullable=True),
        sa.Column("shown_at", sa.DateTime(), nullable=True),
        sa.Column("voted_at", sa.DateTime(), nullable=False),
        sa.Column("latency_ms", sa.Integer(), nullable=True),
        sa.Column("idempotency_key", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.CheckConstraint("outcome IN ('a', 'b', 'tie', 'both_bad', 'skip')", name=op.f("ck_votes_outcome")),
        sa.CheckConstraint(
            "(revision = 1 AND supersedes_id IS NULL) OR (revision > 1 AND supersedes_id IS NOT NULL)",
            name=op.f("ck_votes_revision_chain"),
        ),
        sa.CheckConstraint(
            "latency_ms IS NULL OR latency_ms >= 0", name=op.f("ck_votes_latency_nonnegative")
        ),
        sa.CheckConstraint("length(rationale) <= 2000", name=op.f("ck_votes_rationale_length")),
        sa.CheckConstraint("revision >= 1", name=op.f("ck_votes_revision_positive")),
        sa.ForeignKeyConstraint(
            ["annotator_id"], ["annotators.id"], name=op.f("fk_votes_annotator_id_annotators")
        ),
        sa.ForeignKeyConstraint(
            ["comparison_id"], ["comparisons.id"], name=op.f("fk_votes_comparison_id_comparisons")
        ),
        sa.ForeignKeyConstraint(["session_id"], ["sessions.id"], name=op.f("fk_votes_session_id_sessions")),
        sa.ForeignKeyConstraint(
            ["supersedes_id", "comparison_id", "annotator_id"],
            ["votes.id", "votes.comparison_id", "votes.annotator_id"],
            name="fk_votes_supersedes_same_pair",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_votes")),
        sa.UniqueConstraint(
            "comparison_id",
            "annotator_id",
            "revision",
            name=op.f("uq_votes_comparison_id_annotator_id_revision"),
        ),
        sa.UniqueConstraint(
            "id", "comparison_id", "annotator_id", name=op.f("uq_votes_id_comparison_id_annotator_id")
        ),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_votes_idempotency_key")),
        sa.UniqueConstraint("supersedes_id", name=op.f("uq_votes_supersedes_id")),
    )
    op.create_index("ix_votes_annotator_id", "votes", ["annotator_id"], unique=False)

    _install_triggers()


def downgrade() -> None:
    _drop_triggers()
    op.drop_index("ix_votes_annotator_id", table_name="votes")

    op.drop_table("votes")
    op.drop_table("assignments")
    op.drop_index(op.f("ix_comparisons_prompt_id"), table_name="comparisons")
    op.drop_index(op.f("ix_comparisons_candidate_b_id"), table_name="comparisons")
    op.drop_index(op.f("ix_comparisons_candidate_a_id"), table_name="comparisons")

    op.drop_table("comparisons")
    op.drop_table("events")
    op.drop_table("candidates")
    op.drop_index(op.f("ix_sessions_annotator_id"), table_name="sessions")

    op.drop_table("sessions")
    op.drop_index(op.f("ix_runs_sampler"), table_name="runs")
    op.drop_index(op.f("ix_runs_reward"), table_name="runs")
    op.drop_index(op.f("ix_runs_prompt_id"), table_name="runs")
    op.drop_index(op.f("ix_runs_model"), table_name="runs")
    op.drop_index(op.f("ix_runs_created_at"), table_name="runs")

    op.drop_table("runs")
    op.drop_table("prompts")
    op.drop_table("annotators")
