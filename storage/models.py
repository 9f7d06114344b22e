"""The tables, as SQLAlchemy 2 typed declarative models.

The schema itself is created and changed only by the Alembic migrations in
``storage/migrations``; a test checks that the migrated schema equals these
models.

Votes are append-only and the database, not the code, enforces the rules:

* ``outcome`` is one of ``a``, ``b``, ``tie``, ``both_bad``, ``skip`` (CHECK);
  ``a`` / ``b`` name the comparison's candidate A / B, never a screen side
  (``comparisons.left`` records which candidate was shown on the left).
* One *current* vote per (comparison, annotator). A changed mind is a new row
  with ``revision = previous + 1`` whose ``supersedes_id`` points at the vote
  it replaces. Then:

  - ``UNIQUE (comparison_id, annotator_id, revision)`` and
    ``CHECK ((revision = 1) = (supersedes_id IS NULL))`` allow exactly one
    first vote per pair;
  - ``UNIQUE (supersedes_id)`` lets a vote be superseded at most once;
  - the composite foreign key ``(supersedes_id, comparison_id, annotator_id)
    -> votes (id, comparison_id, annotator_id)`` keeps a correction in the
    same comparison and annotator.

  So the votes of one pair form a single chain and its head (the highest
  revision, the one nothing supersedes) is the current vote.
* ``idempotency_key`` is unique: a retried request stores nothing new.
* Triggers installed by the migration abort any UPDATE or DELETE on votes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

OUTCOMES = ("a", "b", "tie", "both_bad", "skip")
EXPORT_FORMATS = ("dpo", "kto", "battles", "pickapic")
PLAYERS = ("sampler", "model")  # who plays in battles and rankings
RATIONALE_MAX_CHARS = 2000
NAME_MAX_CHARS = 200
KEY_MAX_CHARS = 128

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite keeps no zone: store naive UTC)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("datetimes stored must be timezone-aware")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Annotator(Base):
    __tablename__ = "annotators"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_MAX_CHARS), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class LabelSession(Base):
    """One sitting of an annotator in the Label tab (votes may point at it)."""

    __tablename__ = "sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotators.id"), index=True)
    client: Mapped[str | None] = mapped_column(String(NAME_MAX_CHARS))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Prompt(Base):
    """Prompt text, stored once: ``sha256`` is the hex digest of its UTF-8 bytes."""

    __tablename__ = "prompts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Run(Base):
    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id"), index=True)
    title: Mapped[str | None] = mapped_column(String(NAME_MAX_CHARS))
    model: Mapped[str] = mapped_column(String(NAME_MAX_CHARS), index=True)
    reward: Mapped[str] = mapped_column(String(NAME_MAX_CHARS), index=True)
    sampler: Mapped[str] = mapped_column(String(NAME_MAX_CHARS), index=True)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    seed: Mapped[int] = mapped_column(BigInteger)
    task: Mapped[dict[str, Any]] = mapped_column(JSON)
    cost: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(32))
    source: Mapped[str] = mapped_column(String(32), default="sample")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class RunEvent(Base):
    """One trace event; ``payload`` is ``engines.trace.event_to_dict(event)``."""

    __tablename__ = "events"
    __table_args__ = (UniqueConstraint("run_id", "seq"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    seq: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)


class Candidate(Base):
    """A complete candidate of a run (``node_id`` is its id in the trace)."""

    __tablename__ = "candidates"
    __table_args__ = (UniqueConstraint("run_id", "node_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    node_id: Mapped[str] = mapped_column(String(NAME_MAX_CHARS))
    text: Mapped[str] = mapped_column(Text)
    image: Mapped[str | None] = mapped_column(Text)
    reward: Mapped[float | None] = mapped_column(Float)
    tokens: Mapped[int] = mapped_column(Integer, default=0)
    picked: Mapped[bool] = mapped_column(Boolean, default=False)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON)


class Comparison(Base):
    __tablename__ = "comparisons"
    __table_args__ = (
        CheckConstraint("candidate_a_id <> candidate_b_id", name="distinct_candidates"),
        CheckConstraint("left_side IN ('a', 'b')", name="left_side"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id"), index=True)
    candidate_a_id: Mapped[int] = mapped_column(ForeignKey("candidates.id"), index=True)
    candidate_b_id: Mapped[int] = mapped_column(ForeignKey("candidates.id"), index=True)
    #: which candidate ('a' or 'b') is shown on the left, drawn by a seeded rng
    left_side: Mapped[str] = mapped_column(String(1))
    blind: Mapped[bool] = mapped_column(Boolean, default=True)
    strategy: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Assignment(Base):
    """A comparison in an annotator's queue. A comparison with assignments is
    votable only by those annotators; one without is open to everyone."""

    __tablename__ = "assignments"

    comparison_id: Mapped[int] = mapped_column(ForeignKey("comparisons.id"), primary_key=True)
    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotators.id"), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ComparisonQuality(Base):
    """Label-quality settings of one comparison (migration 0002_label_quality).

    ``overlap``: at most this many annotators vote on it while it is open;
    ``gold``: its known answer (a gold pair); ``repeat_of_id``: the comparison
    it repeats with the sides swapped.
    """

    __tablename__ = "comparison_quality"
    __table_args__ = (
        CheckConstraint("overlap IS NULL OR overlap >= 1", name="overlap_positive"),
        CheckConstraint("gold IS NULL OR gold IN ('a', 'b', 'tie')", name="gold"),
        CheckConstraint("repeat_of_id IS NULL OR repeat_of_id <> comparison_id", name="not_self"),
    )

    comparison_id: Mapped[int] = mapped_column(ForeignKey("comparisons.id"), primary_key=True)
    overlap: Mapped[int | None] = mapped_column(Integer)
    gold: Mapped[str | None] = mapped_column(String(8))
    repeat_of_id: Mapped[int | None] = mapped_column(ForeignKey("comparisons.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Vote(Base):
    __tablename__ = "votes"
    __table_args__ = (
        UniqueConstraint("comparison_id", "annotator_id", "revision"),
        UniqueConstraint("id", "comparison_id", "annotator_id"),
        ForeignKeyConstraint(
            ["supersedes_id", "comparison_id", "annotator_id"],
            ["votes.id", "votes.comparison_id", "votes.annotator_id"],
            name="fk_votes_supersedes_same_pair",
        ),
        CheckConstraint("outcome IN (" + ", ".join(f"'{o}'" for o in OUTCOMES) + ")", name="outcome"),
        CheckConstraint("revision >= 1", name="revision_positive"),
        CheckConstraint(
            "(revision = 1 AND supersedes_id IS NULL) OR (revision > 1 AND supersedes_id IS NOT NULL)",
            name="revision_chain",
        ),
        CheckConstraint(f"length(rationale) <= {RATIONALE_MAX_CHARS}", name="rationale_length"),
        CheckConstraint("latency_ms IS NULL OR latency_ms >= 0", name="latency_nonnegative"),
        Index("ix_votes_annotator_id", "annotator_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    comparison_id: Mapped[int] = mapped_column(ForeignKey("comparisons.id"))
    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotators.id"))
    session_id: Mapped[int | None] = mapped_column(ForeignKey("sessions.id"))
    revision: Mapped[int] = mapped_column(Integer)
    supersedes_id: Mapped[int | None] = mapped_column(Integer, unique=True)
    outcome: Mapped[str] = mapped_column(String(16))
    rationale: Mapped[str | None] = mapped_column(Text)
    shown_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    voted_at: Mapped[datetime] = mapped_column(UTCDateTime)
    latency_ms: Mapped[int | None] = mapped_column(Integer)
    idempotency_key: Mapped[str] = mapped_column(String(KEY_MAX_CHARS), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)




class PromptSet(Base):
    """A named prompt set, stored once: ``sha256`` is the hash of its canonical task list
    (``engines.prompts.PromptSet.content_hash``); built-in sets are stored on first use."""

    __tablename__ = "prompt_sets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_MAX_CHARS), unique=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    source: Mapped[str] = mapped_column(Text)
    columns: Mapped[dict[str, Any]] = mapped_column(JSON)
    model: Mapped[str | None] = mapped_column(String(NAME_MAX_CHARS))
    reward: Mapped[str | None] = mapped_column(String(NAME_MAX_CHARS))
    size: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class PromptSetItem(Base):
    """One prompt of a set, in order; the text lives in ``prompts`` (deduplicated by hash)."""

    __tablename__ = "prompt_set_items"
    __table_args__ = (UniqueConstraint("set_id", "position"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    set_id: Mapped[int] = mapped_column(ForeignKey("prompt_sets.id"))
    position: Mapped[int] = mapped_column(Integer)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id"), index=True)
    answer: Mapped[str | None] = mapped_column(Text)
    system: Mapped[str | None] = mapped_column(Text)
    chat: Mapped[bool] = mapped_column(Boolean, default=True)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON)


class Sweep(Base):
    """Samplers on a prompt set at matched compute: ``spec`` is ``engines.sweep.SweepPlan.as_dict()``."""

    __tablename__ = "sweeps"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    title: Mapped[str | None] = mapped_column(String(NAME_MAX_CHARS))
    prompt_set_id: Mapped[int] = mapped_column(ForeignKey("prompt_sets.id"), index=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(32))
    cells_planned: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class SweepCell(Base):
    """One finished (arm, level, prompt) cell of a sweep and the run it made; a cell is stored
    only when its run finished, so a resumed sweep redoes exactly the cells missing here."""

    __tablename__ = "sweep_cells"
    __table_args__ = (UniqueConstraint("sweep_id", "arm", "level", "prompt_index"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sweep_id: Mapped[int] = mapped_column(ForeignKey("sweeps.id"))
    arm: Mapped[str] = mapped_column(String(NAME_MAX_CHARS))
    level: Mapped[float] = mapped_column(Float)
    prompt_index: Mapped[int] = mapped_column(Integer)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), index=True)
    seed: Mapped[int] = mapped_column(BigInteger)
    engine: Mapped[str] = mapped_column(String(NAME_MAX_CHARS))
    status: Mapped[str] = mapped_column(String(32))
    quality: Mapped[float | None] = mapped_column(Float)
    steer: Mapped[float | None] = mapped_column(Float)
    cost: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


TABLES = tuple(Base.metadata.sorted_tables)
