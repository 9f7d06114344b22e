"""Labelling: annotator queues, the next comparison to show, and votes.

A vote's ``outcome`` names the comparison's candidate (``a``/``b``), a
``tie``, ``both_bad`` or a ``skip``; :meth:`Presentation.outcome` turns the
button the annotator pressed (left / right / ...) into it, using the side the
comparison was shown on.

``add_vote`` follows the habits of labelling systems that people trust:

* everything is checked before anything is written; any problem raises one
  :class:`storage.errors.StorageError` subclass and the transaction writes
  nothing;
* a retry with the same idempotency key returns the first result and stores
  nothing new (a key reused for a *different* vote is a Conflict);
* one current vote per (comparison, annotator): a second vote must name the
  current one in ``supersedes`` (a changed mind); it becomes a new row with the
  next revision, the old row stays as it was;
* the result is returned only after the caller commits (``Database.write``),
  so an acknowledged vote is on disk.

The Label tab's click is the hot path: ``present`` + ``add_vote`` in one write
transaction, then ``queue_state`` (the next comparison and the progress counts)
in one read: 13 SQL statements in all (27 before), each statement built once
and run with bound parameters (``tests/storage/test_votes.py`` holds the bound;
``python -m bench.bench_storage --vote-path --against REV`` measures it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import and_, bindparam, exists, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from storage.errors import Conflict, InvalidInput, NotAllowed, NotFound
from storage.models import (
    KEY_MAX_CHARS,
    NAME_MAX_CHARS,
    OUTCOMES,
    RATIONALE_MAX_CHARS,
    Annotator,
    Assignment,
    Candidate,
    Comparison,
    ComparisonQuality,
    LabelSession,
    Prompt,
    Run,
    Vote,
    utcnow,
)
from storage.rows import find_annotator, get_or_create_annotator, require
from storage.serial import check_optional_text, check_text

CHOICES = ("left", "right", "tie", "both_bad", "skip")


@dataclass(frozen=True)
class Shown:
    """One side of a comparison as the Label tab shows it."""

    candidate_id: int
    text: str
    image: str | None
    run_id: int
    model: str
    sampler: str
    reward: float | None = None  # hidden by a blind UI until the vote is in


@dataclass(frozen=True)
class Presentation:
    """A comparison ready to show: prompt, left and right candidates, when it was served."""

    comparison_id: int
    prompt: str
    left: Shown
    right: Shown
    left_side: str  # which candidate ('a' or 'b') is on the left
    blind: bool  # hide model / sampler names until the vote is in
    strategy: str
    shown_at: datetime

    def outcome(self, choice: str) -> str:
        """The vote outcome for a button: left / right / tie / both_bad / skip."""
        if choice == "left":
            return self.left_side
        if choice == "right":
            return "b" if self.left_side == "a" else "a"
        if choice in ("tie", "both_bad", "skip"):
            return choice
        raise InvalidInput(f"unknown choice {choice!r}; choose one of {', '.join(CHOICES)}")


@dataclass(frozen=True)
class VoteResult:
    vote_id: int
    comparison_id: int
    annotator: str
    outcome: str
    revision: int
    supersedes: int | None
    created: bool  # False when an idempotent retry returned the stored vote
    created_at: datetime


def _result(vote: Vote, annotator: str, created: bool) -> VoteResult:
    return VoteResult(
        vote_id=vote.id,
        comparison_id=vote.comparison_id,
        annotator=annotator,
        outcome=vote.outcome,
        revision=vote.revision,
        supersedes=vote.supersedes_id,
        created=created,
        created_at=vote.created_at,
    )


def current_vote_filter() -> Any:
    """SQL condition: the vote is current (no later vote supersedes it)."""
    later = aliased(Vote)
    return ~exists().where(later.supersedes_id == Vote.id)


def start_session(session: Session, annotator: str, *, client: str | None = None) -> int:
    """Open a labelling session for ``annotator`` (created if new); its id."""
    client = check_optional_text(client, "client", max_chars=NAME_MAX_CHARS)
    row = LabelSession(annotator_id=get_or_create_annotator(session, annotator).id, client=client)
    session.add(row)
    session.flush()
    return row.id


def assign(session: Session, comparison_ids: Sequence[int], annotators: Sequence[str]) -> int:
    """Put comparisons in annotators' queues (only they may then vote); new assignments made."""
    if isinstance(annotators, str):
        raise InvalidInput("annotators must be a list of names, not one string")
    comparisons = [require(session, Comparison, cid, "comparison") for cid in comparison_ids]
    people = [get_or_create_annotator(session, name) for name in annotators]
    made = 0
    for comparison in comparisons:
        for person in people:
            if session.get(Assignment, (comparison.id, person.id)) is None:
                session.add(Assignment(comparison_id=comparison.id, annotator_id=person.id))
                made += 1
    session.flush()
    return made


def _shown(cand: Candidate, run: Run) -> Shown:
    return Shown(
        candidate_id=cand.id,
        text=cand.text,
        image=cand.image,
        run_id=run.id,
        model=run.model,
        sampler=run.sampler,
        reward=cand.reward,
    )


# The vote path's statements are built once and executed with bound parameters:
# building an ORM select (aliases above all) costs more Python time than SQLite
# takes to run it.


@cache
def _present_query() -> Any:
    cand_a, cand_b = aliased(Candidate), aliased(Candidate)
    run_a, run_b = aliased(Run), aliased(Run)
    return (
        select(Comparison, Prompt.text, cand_a, run_a, cand_b, run_b)
        .join(Prompt, Prompt.id == Comparison.prompt_id)
        .join(cand_a, cand_a.id == Comparison.candidate_a_id)
        .join(run_a, run_a.id == cand_a.run_id)
        .join(cand_b, cand_b.id == Comparison.candidate_b_id)
        .join(run_b, run_b.id == cand_b.run_id)
        .where(Comparison.id == bindparam("comparison_id"))
    )


def present(session: Session, comparison_id: int, *, now: datetime | None = None) -> Presentation:
    """The comparison laid out left/right as recorded in ``comparisons.left_side``.

    One query: the comparison, its prompt, both candidates and their runs.
    """
    if isinstance(comparison_id, bool) or not isinstance(comparison_id, int):
        raise InvalidInput(f"comparison id must be an integer, got {comparison_id!r}")
    row = None
    if -(2**63) <= comparison_id < 2**63:
        row = session.execute(_present_query(), {"comparison_id": comparison_id}).first()
    if row is None:
        raise NotFound(f"no comparison with id {comparison_id}")
    comparison, prompt, ca, ra, cb, rb = row
    a, b = _shown(ca, ra), _shown(cb, rb)
    left, right = (a, b) if comparison.left_side == "a" else (b, a)
    return Presentation(
        comparison_id=comparison.id,
        prompt=prompt,
        left=left,
        right=right,
        left_side=comparison.left_side,
        blind=comparison.blind,
        strategy=comparison.strategy,
        shown_at=now or utcnow(),
    )


@cache
def _next_query() -> Any:
    person_id = bindparam("person_id")
    # annotators so far, per comparison: a correlated count on the (comparison, annotator, revision)
    # index, cheaper than grouping every vote in the database on each call
    voters = (
        select(func.count(func.distinct(Vote.annotator_id)))
        .where(Vote.comparison_id == Comparison.id)
        .correlate(Comparison)  # also inside the overlap EXISTS, whose own FROM has no comparisons
        .scalar_subquery()
    )
    mine = exists().where(Assignment.comparison_id == Comparison.id, Assignment.annotator_id == person_id)
    anyone = exists().where(Assignment.comparison_id == Comparison.id)
    voted = exists().where(Vote.comparison_id == Comparison.id, Vote.annotator_id == person_id)
    # overlap (storage.quality): an open comparison with its k annotators is no longer offered
    full = exists().where(
        ComparisonQuality.comparison_id == Comparison.id,
        ComparisonQuality.overlap.is_not(None),
        ComparisonQuality.overlap <= voters,
    )
    return (
        select(Comparison.id)
        .where(~voted, mine | (~anyone & ~full))
        .order_by(mine.desc(), voters, Comparison.id)
        .limit(1)
    )


def _next_comparison_id(session: Session, person_id: int) -> int | None:
    return session.scalars(_next_query(), {"person_id": person_id}).first()


def _person_id(session: Session, annotator: str) -> int:
    person = find_annotator(session, annotator)
    return person.id if person is not None else -1


def next_comparison(session: Session, annotator: str, *, now: datetime | None = None) -> Presentation | None:
    """The next comparison for ``annotator``, or None when their queue is empty.

    Never one they already voted on (a skip counts as a vote). Comparisons
    assigned to them come first, then open ones (assigned to nobody) with the
    fewest annotators so far, oldest first; an open comparison whose overlap
    cap (``storage.quality.set_overlap``) is reached is not offered. Read-only.
    """
    comparison_id = _next_comparison_id(session, _person_id(session, annotator))
    return None if comparison_id is None else present(session, comparison_id, now=now)


@cache
def _progress_query() -> Any:
    """(comparisons voted on, comparisons left in the queue), from the annotator's own votes and
    assignments rather than a scan of every comparison: queue = assigned to them + assigned to
    nobody, less those of their votes that fall in it."""
    person_id = bindparam("person_id")
    mine = exists().where(Assignment.comparison_id == Comparison.id, Assignment.annotator_id == person_id)
    anyone = exists().where(Assignment.comparison_id == Comparison.id)
    done = select(func.count(func.distinct(Vote.comparison_id))).where(Vote.annotator_id == person_id)
    assigned_to_them = select(func.count()).select_from(Assignment).where(Assignment.annotator_id == person_id)
    comparisons = select(func.count()).select_from(Comparison)
    assigned = select(func.count(func.distinct(Assignment.comparison_id)))
    voted_in_queue = (
        select(func.count(func.distinct(Vote.comparison_id)))
        .join(Comparison, Comparison.id == Vote.comparison_id)
        .where(Vote.annotator_id == person_id, mine | ~anyone)
    )
    remaining = (
        assigned_to_them.scalar_subquery()
        + comparisons.scalar_subquery()
        - assigned.scalar_subquery()
        - voted_in_queue.scalar_subquery()
    )
    return select(done.scalar_subquery(), remaining)


def _progress(session: Session, person_id: int) -> tuple[int, int]:
    done, remaining = session.execute(_progress_query(), {"person_id": person_id}).one()
    return int(done or 0), int(remaining or 0)


def progress(session: Session, annotator: str) -> tuple[int, int]:
    """(comparisons this annotator has voted on, comparisons still in their queue)."""
    return _progress(session, _person_id(session, annotator))


def queue_state(
    session: Session, annotator: str, *, now: datetime | None = None
) -> tuple[Presentation | None, int, int]:
    """``next_comparison`` and ``progress`` together, as the Label tab shows them after each vote.

    Four queries: the annotator, the next comparison's id, its presentation,
    and both progress counts. Read-only.
    """
    person_id = _person_id(session, annotator)
    comparison_id = _next_comparison_id(session, person_id)
    shown = None if comparison_id is None else present(session, comparison_id, now=now)
    done, remaining = _progress(session, person_id)
    return shown, done, remaining


def _check_time(value: Any, field: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise InvalidInput(f"{field} must be a timezone-aware datetime")
    return value


def _check_optional_id(value: Any, what: str) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise InvalidInput(f"{what} must be a vote id (an integer), got {value!r}")
    return value


@cache
def _comparison_queue_query() -> Any:
    """The comparison's id, whether anyone has it in their queue, whether this annotator has."""
    return select(
        Comparison.id,
        exists().where(Assignment.comparison_id == Comparison.id),
        exists().where(Assignment.comparison_id == Comparison.id, Assignment.annotator_id == bindparam("person_id")),
    ).where(Comparison.id == bindparam("comparison_id"))


@cache
def _key_or_slot_query() -> Any:
    """The vote holding an idempotency key, and every vote in one (comparison, annotator) slot."""
    return (
        select(Vote, Annotator.name)
        .join(Annotator, Annotator.id == Vote.annotator_id)
        .where(
            or_(
                Vote.idempotency_key == bindparam("key"),
                and_(Vote.comparison_id == bindparam("comparison_id"), Vote.annotator_id == bindparam("person_id")),
            )
        )
    )


def add_vote(
    session: Session,
    *,
    comparison_id: int,
    annotator: str,
    outcome: str,
    idempotency_key: str,
    rationale: str | None = None,
    shown_at: datetime | None = None,
    voted_at: datetime | None = None,
    supersedes: int | None = None,
    session_id: int | None = None,
) -> VoteResult:
    """Record a vote (see the module docstring for the rules); raises StorageError on bad input."""
    if not isinstance(outcome, str) or outcome not in OUTCOMES:
        raise InvalidInput(f"unknown outcome {outcome!r}; choose one of {', '.join(OUTCOMES)}")
    key = check_text(idempotency_key, "idempotency key", max_chars=KEY_MAX_CHARS, allow_empty=False)
    rationale = check_optional_text(rationale, "rationale", max_chars=RATIONALE_MAX_CHARS)
    shown_at = _check_time(shown_at, "shown_at")
    voted_at = _check_time(voted_at, "voted_at") or utcnow()
    supersedes = _check_optional_id(supersedes, "supersedes")
    session_id = _check_optional_id(session_id, "session_id")
    latency_ms = None
    if shown_at is not None:
        latency_ms = round((voted_at - shown_at).total_seconds() * 1000)
        if latency_ms < 0:
            raise InvalidInput("shown_at is later than voted_at")
    person = find_annotator(session, annotator)  # validates the name
    person_id = person.id if person is not None else -1
    # One query for the comparison and the queue check: is it assigned, and to this annotator?
    if isinstance(comparison_id, bool) or not isinstance(comparison_id, int):
        raise InvalidInput(f"comparison id must be an integer, got {comparison_id!r}")
    found = None
    if -(2**63) <= comparison_id < 2**63:
        found = session.execute(
            _comparison_queue_query(), {"comparison_id": comparison_id, "person_id": person_id}
        ).first()
    if found is None:
        raise NotFound(f"no comparison with id {comparison_id}")
    cid, assigned, mine = found

    # One query for the vote with this idempotency key and every vote in this
    # (comparison, annotator) slot: the replay check and the current vote.
    rows = session.execute(
        _key_or_slot_query(), {"key": key, "comparison_id": cid, "person_id": person_id}
    ).all()
    keyed = next(((v, name) for v, name in rows if v.idempotency_key == key), None)
    if keyed is not None:
        return _same_or_conflict(keyed[0], keyed[1], key, comparison_id, annotator, outcome, rationale, supersedes)

    if assigned and not mine:
        raise NotAllowed(f"comparison {cid} is in another annotator's queue")
    if session_id is not None:
        label_session = require(session, LabelSession, session_id, "labelling session")
        if person is None or label_session.annotator_id != person.id:
            raise NotAllowed(f"labelling session {session_id} belongs to another annotator")

    slot = [v for v, _ in rows if v.comparison_id == cid and v.annotator_id == person_id]
    head = max(slot, key=lambda v: v.revision) if slot else None
    if supersedes is None and head is not None:
        raise Conflict(
            f"{annotator} already voted on comparison {cid} (vote {head.id}); "
            f"to change it, supersede vote {head.id}"
        )
    if supersedes is not None and (head is None or head.id != supersedes):
        current = f"the current vote is {head.id}" if head is not None else "there is no earlier vote"
        raise Conflict(
            f"vote {supersedes} is not {annotator}'s current vote on comparison {cid}; {current}"
        )

    if person is None:
        person = get_or_create_annotator(session, annotator)
    vote = Vote(
        comparison_id=cid,
        annotator_id=person.id,
        session_id=session_id,
        revision=1 if head is None else head.revision + 1,
        supersedes_id=supersedes,
        outcome=outcome,
        rationale=rationale,
        shown_at=shown_at,
        voted_at=voted_at,
        latency_ms=latency_ms,
        idempotency_key=key,
    )
    try:
        with session.begin_nested():
            session.add(vote)
    except IntegrityError:
        # A concurrent request won the race: the same key (a retry) or the same slot.
        replay = _replay(session, key, comparison_id, annotator, outcome, rationale, supersedes)
        if replay is not None:
            return replay
        raise Conflict(
            f"{annotator}'s vote on comparison {cid} changed meanwhile; reload and vote again"
        ) from None
    return _result(vote, annotator, created=True)


def _replay(
    session: Session,
    key: str,
    comparison_id: Any,
    annotator: str,
    outcome: str,
    rationale: str | None,
    supersedes: int | None,
) -> VoteResult | None:
    """The stored vote with this idempotency key, if the request repeats it exactly."""
    row = session.execute(
        select(Vote, Annotator.name)
        .join(Annotator, Annotator.id == Vote.annotator_id)
        .where(Vote.idempotency_key == key)
    ).first()
    if row is None:
        return None
    return _same_or_conflict(row[0], row[1], key, comparison_id, annotator, outcome, rationale, supersedes)


def _same_or_conflict(
    vote: Vote,
    name: str,
    key: str,
    comparison_id: Any,
    annotator: str,
    outcome: str,
    rationale: str | None,
    supersedes: int | None,
) -> VoteResult:
    """The stored vote ``vote`` (holding ``key``) as a replay, or a Conflict if the request differs."""
    same = (
        vote.comparison_id == comparison_id
        and name == annotator
        and vote.outcome == outcome
        and vote.rationale == rationale
        and vote.supersedes_id == supersedes
    )
    if not same:
        raise Conflict(f"idempotency key {key!r} was already used for a different vote ({vote.id})")
    return _result(vote, name, created=False)


def vote_history(session: Session, comparison_id: int, annotator: str) -> list[VoteResult]:
    """Every vote ``annotator`` cast on the comparison, oldest first (the last is current)."""
    person = find_annotator(session, annotator)
    if person is None:
        return []
    votes = session.scalars(
        select(Vote)
        .where(Vote.comparison_id == comparison_id, Vote.annotator_id == person.id)
        .order_by(Vote.revision)
    )
    return [_result(v, annotator, created=False) for v in votes]
