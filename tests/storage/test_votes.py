"""Queues, the next comparison, votes: idempotency, supersede chains, permissions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from storage_helpers import dump, store_run

from storage import (
    Conflict,
    InvalidInput,
    NotAllowed,
    NotFound,
    add_vote,
    assign,
    make_comparisons,
    next_comparison,
    present,
    progress,
    start_session,
    vote_history,
)
from storage.records import vote_records


@pytest.fixture
def comparisons(db):
    run = store_run(db, ["a", "b", "c", "d"], [1.0, 2.0, 3.0, 4.0])
    return db.write(lambda s: make_comparisons(s, run, "all_pairs"))


def vote(db, cid, who="ada", outcome="a", key=None, **kw):
    key = key or f"{who}-{cid}-{outcome}-{kw.get('supersedes')}"
    return db.write(
        lambda s: add_vote(s, comparison_id=cid, annotator=who, outcome=outcome, idempotency_key=key, **kw)
    )


def test_next_comparison_never_repeats_a_voted_one(db, comparisons):
    seen = []
    while (shown := db.read(lambda s: next_comparison(s, "ada"))) is not None:
        assert shown.comparison_id not in seen
        seen.append(shown.comparison_id)
        vote(db, shown.comparison_id, outcome=shown.outcome("left" if len(seen) % 2 else "skip"))
    assert sorted(seen) == sorted(comparisons)
    # another annotator still has the whole queue
    assert db.read(lambda s: next_comparison(s, "bob")).comparison_id == comparisons[0]


def test_next_comparison_prefers_own_queue_then_least_voted(db, comparisons):
    db.write(lambda s: assign(s, [comparisons[3]], ["bob"]))
    assert db.read(lambda s: next_comparison(s, "bob")).comparison_id == comparisons[3]
    # ada cannot see bob's assignment; she gets the oldest open one
    assert db.read(lambda s: next_comparison(s, "ada")).comparison_id == comparisons[0]
    vote(db, comparisons[0], who="cy")
    assert db.read(lambda s: next_comparison(s, "ada")).comparison_id == comparisons[1]


def test_presentation_maps_buttons_to_candidates(db, comparisons):
    shown = db.read(lambda s: present(s, comparisons[0]))
    a_is_left = shown.left_side == "a"
    assert shown.outcome("left") == ("a" if a_is_left else "b")
    assert shown.outcome("right") == ("b" if a_is_left else "a")
    assert [shown.outcome(c) for c in ("tie", "both_bad", "skip")] == ["tie", "both_bad", "skip"]
    assert shown.left.candidate_id != shown.right.candidate_id
    assert shown.prompt == "Say something nice." and shown.left.sampler == "best_of_n"
    with pytest.raises(InvalidInput):
        shown.outcome("middle")


def test_vote_is_stored_with_latency_and_session(db, comparisons):
    shown_at = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    sid = db.write(lambda s: start_session(s, "ada", client="firefox"))
    result = vote(
        db,
        comparisons[0],
        outcome="tie",
        rationale="both fine",
        shown_at=shown_at,
        voted_at=shown_at + timedelta(seconds=2.5),
        session_id=sid,
    )
    assert result.created and result.revision == 1 and result.supersedes is None
    [record] = db.read(vote_records)
    assert record.outcome == "tie" and record.rationale == "both fine" and record.latency_ms == 2500
    assert record.voted_at == shown_at + timedelta(seconds=2.5)


def test_same_idempotency_key_stores_once(db, comparisons):
    first = vote(db, comparisons[0], key="click-1")
    again = vote(db, comparisons[0], key="click-1")
    assert first.created and not again.created
    assert again.vote_id == first.vote_id and again.created_at == first.created_at
    assert len(db.read(vote_records)) == 1
    with pytest.raises(Conflict, match="already used for a different vote"):
        vote(db, comparisons[0], outcome="b", key="click-1")


def test_second_vote_must_supersede_the_current_one(db, comparisons):
    first = vote(db, comparisons[0], outcome="a")
    with pytest.raises(Conflict, match="already voted"):
        vote(db, comparisons[0], outcome="b")
    second = vote(db, comparisons[0], outcome="b", supersedes=first.vote_id)
    assert second.revision == 2 and second.supersedes == first.vote_id
    with pytest.raises(Conflict, match="not ada's current vote"):  # stale: first is no longer current
        vote(db, comparisons[0], outcome="tie", supersedes=first.vote_id, key="stale")
    third = vote(db, comparisons[0], outcome="tie", supersedes=second.vote_id)
    history = db.read(lambda s: vote_history(s, comparisons[0], "ada"))
    assert [(h.outcome, h.revision) for h in history] == [("a", 1), ("b", 2), ("tie", 3)]
    [current] = db.read(vote_records)
    assert current.vote_id == third.vote_id and current.outcome == "tie"
    # supersede someone else's vote: refused
    bob = vote(db, comparisons[1], who="bob")
    with pytest.raises(Conflict):
        vote(db, comparisons[1], who="ada", supersedes=bob.vote_id)


def test_someone_elses_queue_is_refused(db, comparisons):
    db.write(lambda s: assign(s, [comparisons[0]], ["bob"]))
    before = dump(db)
    with pytest.raises(NotAllowed, match="another annotator's queue"):
        vote(db, comparisons[0], who="ada")
    with pytest.raises(NotAllowed):
        vote(db, comparisons[0], who="newcomer")
    assert dump(db) == before  # not even the new annotator row
    assert vote(db, comparisons[0], who="bob").created


def test_session_of_another_annotator_is_refused(db, comparisons):
    sid = db.write(lambda s: start_session(s, "bob"))
    with pytest.raises(NotAllowed, match="session"):
        vote(db, comparisons[0], who="ada", session_id=sid)
    with pytest.raises(NotFound):
        vote(db, comparisons[0], who="ada", session_id=sid + 100)


def test_missing_comparison(db):
    with pytest.raises(NotFound, match="no comparison with id 9"):
        vote(db, 9)


# -- the vote path's cost ---------------------------------------------------------------------------------

#: statements one Label-tab vote costs (submit in one write transaction, then the next comparison
#: and the progress counts in one read): 27 before the vote path was tightened, 13 after.
VOTE_PATH_STATEMENTS = 14


def test_the_vote_path_runs_a_bounded_number_of_statements(db, comparisons):
    from sqlalchemy import event

    from storage import queue_state

    db.write(lambda s: assign(s, comparisons[:3], ["ada"]))  # the queue check finds an assignment
    statements: list[str] = []

    def count(_conn, _cursor, statement, *_args):
        statements.append(statement)

    def label_one(cid, key):
        def write(s):
            shown = present(s, cid)
            return add_vote(s, comparison_id=cid, annotator="ada", outcome=shown.outcome("left"), idempotency_key=key)

        result = db.write(write)
        return result, db.read(lambda s: queue_state(s, "ada"))

    label_one(comparisons[0], "k0")  # the first vote also creates the annotator
    event.listen(db.engine, "before_cursor_execute", count)
    try:
        result, (shown, done, remaining) = label_one(comparisons[1], "k1")
    finally:
        event.remove(db.engine, "before_cursor_execute", count)
    assert result.created and shown.comparison_id == comparisons[2] and (done, remaining) == (2, 4)
    assert len(statements) <= VOTE_PATH_STATEMENTS, "\n".join(statements)
    # queue_state answers what next_comparison and progress answer, for a queue and for a newcomer
    when = datetime(2026, 1, 1, tzinfo=UTC)
    for who in ("ada", "bob"):
        assert db.read(lambda s, w=who: queue_state(s, w, now=when)) == (
            db.read(lambda s, w=who: next_comparison(s, w, now=when)),
            *db.read(lambda s, w=who: progress(s, w)),
        )


def test_next_comparison_and_progress_match_their_definition_on_a_random_database(db):
    """The tightened queries answer what the docstrings define, computed here in Python from the rows."""
    import random

    from storage.quality import set_overlap

    rng = random.Random(7)
    run = store_run(db, [f"t{i}" for i in range(8)], [float(i) for i in range(8)])
    cids = db.write(lambda s: make_comparisons(s, run, "all_pairs", max_pairs=28))
    people = ["p0", "p1", "p2", "p3", "p4"]
    assigned = {c: set(rng.sample(people, rng.choice([0, 0, 1, 2]))) for c in cids}
    for c, who in assigned.items():
        if who:
            db.write(lambda s, c=c, w=sorted(who): assign(s, [c], w))
    overlap = {c: rng.choice([None, 1, 2]) for c in cids if not assigned[c]}
    for c, k in overlap.items():
        db.write(lambda s, c=c, k=k: set_overlap(s, [c], k))
    voters: dict[int, set[str]] = {c: set() for c in cids}
    for n in range(60):
        c, who = rng.choice(cids), rng.choice(people)
        if who in voters[c] or (assigned[c] and who not in assigned[c]):
            continue
        vote(db, c, who=who, outcome=rng.choice(["a", "b", "tie", "skip"]), key=f"r{n}")
        voters[c].add(who)
    for who in [*people, "newcomer"]:
        mine = [c for c in cids if who in assigned[c] and who not in voters[c]]
        open_ = [
            c for c in cids
            if not assigned[c] and who not in voters[c] and (overlap.get(c) is None or len(voters[c]) < overlap[c])
        ]
        expected = min(mine or open_, key=lambda c: (len(voters[c]), c), default=None)
        shown = db.read(lambda s, w=who: next_comparison(s, w))
        assert (shown.comparison_id if shown else None) == expected, who
        queue = [c for c in cids if who in assigned[c] or not assigned[c]]
        done = sum(who in voters[c] for c in cids)
        assert db.read(lambda s, w=who: progress(s, w)) == (done, sum(who not in voters[c] for c in queue)), who
