"""Bad input: a clear error, nothing written, stored data unchanged.

SQL metacharacters are not bad input: names like O'Brien are legitimate, so
they must be stored verbatim and read back unchanged (parameters, never string
building), without touching any other row.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from storage_helpers import dump, make_trace

from storage import (
    Conflict,
    InvalidInput,
    NotAllowed,
    NotFound,
    StorageError,
    add_vote,
    assign,
    load_run,
    make_comparisons,
    next_comparison,
    save_run,
    start_session,
    vote_history,
)
from storage.records import vote_records

NASTY = [
    "'; DROP TABLE votes; --",
    '" OR 1=1 --',
    "Robert'); DELETE FROM runs WHERE ('1'='1",
    "50% _off_ \\ $$ $1 :name ? `x` [y] /* z */",
    "O'Brien",
]


@pytest.fixture
def seeded(db):
    """A run, three comparisons (the last in bob's queue) and one vote by bob."""
    trace = make_trace(["alpha", "beta", "gamma"], [1.0, 2.0, 3.0])
    run = db.write(
        lambda s: save_run(
            s, trace=trace, task={"prompt": "p"}, model="m", reward="r", sampler="s", config={}, seed=0
        )
    )
    cids = db.write(lambda s: make_comparisons(s, run, "all_pairs"))
    db.write(lambda s: assign(s, [cids[2]], ["bob"]))
    db.write(lambda s: add_vote(s, comparison_id=cids[2], annotator="bob", outcome="a", idempotency_key="b1"))
    return cids


def good(cids, **change):
    kwargs = dict(comparison_id=cids[0], annotator="ada", outcome="a", idempotency_key="fresh-key")
    kwargs.update(change)
    return kwargs


BAD_VOTES = [
    ("unknown outcome", {"outcome": "maybe"}, InvalidInput, "unknown outcome"),
    ("outcome not text", {"outcome": 1}, InvalidInput, "unknown outcome"),
    ("outcome wrong case", {"outcome": "A"}, InvalidInput, "unknown outcome"),
    ("missing comparison", {"comparison_id": 10**6}, NotFound, "no comparison"),
    ("comparison id not int", {"comparison_id": "1"}, InvalidInput, "integer"),
    ("someone else's queue", {"comparison_id": "QUEUE"}, NotAllowed, "another annotator's queue"),
    ("1 MB rationale", {"rationale": "x" * 1_000_000}, InvalidInput, "limit is 2,000"),
    ("invalid UTF-8 bytes", {"rationale": b"\xff\xfe bad"}, InvalidInput, "bytes"),
    ("lone surrogate rationale", {"rationale": "ok \udc80 not"}, InvalidInput, "not valid UTF-8"),
    ("lone surrogate annotator", {"annotator": "ad\ud800a"}, InvalidInput, "not valid UTF-8"),
    ("NUL in annotator", {"annotator": "ada\x00"}, InvalidInput, "NUL"),
    ("NUL in rationale", {"rationale": "a\x00b"}, InvalidInput, "NUL"),
    ("NUL in key", {"idempotency_key": "k\x00"}, InvalidInput, "NUL"),
    ("empty annotator", {"annotator": "  "}, InvalidInput, "empty"),
    ("annotator too long", {"annotator": "a" * 201}, InvalidInput, "limit"),
    ("empty key", {"idempotency_key": ""}, InvalidInput, "empty"),
    ("key too long", {"idempotency_key": "k" * 129}, InvalidInput, "limit"),
    ("naive time", {"shown_at": datetime(2026, 1, 1)}, InvalidInput, "timezone"),
    ("shown after voted", {"shown_at": datetime.now(UTC) + timedelta(hours=1)}, InvalidInput, "later"),
    ("supersede nothing", {"supersedes": 1}, Conflict, "current vote"),
    ("supersedes not int", {"supersedes": "1"}, InvalidInput, "vote id"),
    ("bob's key reused", {"idempotency_key": "b1"}, Conflict, "already used"),
    (
        "SQL in every field + bad outcome",
        {"annotator": NASTY[0], "rationale": NASTY[1], "idempotency_key": NASTY[2], "outcome": NASTY[3]},
        InvalidInput,
        "unknown outcome",
    ),
]


@pytest.mark.parametrize("change,error,message", [c[1:] for c in BAD_VOTES], ids=[c[0] for c in BAD_VOTES])
def test_bad_vote_is_refused_and_changes_nothing(db, seeded, change, error, message):
    if change.get("comparison_id") == "QUEUE":
        change = {**change, "comparison_id": seeded[2]}
    before = dump(db)
    with pytest.raises(error, match=message) as caught:
        db.write(lambda s: add_vote(s, **good(seeded, **change)))
    assert isinstance(caught.value, StorageError)
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 300
    assert dump(db) == before


def test_sql_metacharacters_are_stored_verbatim_everywhere(db, seeded):
    before = dump(db)
    for i, nasty in enumerate(NASTY):
        trace = make_trace([nasty + " one", nasty + " two"], [0.0, 1.0])
        run = db.write(
            lambda s, t=trace, n=nasty, i=i: save_run(
                s,
                trace=t,
                task={"prompt": n, "system": n},
                model=n,
                reward=n,
                sampler=n,
                config={n: n},
                seed=i,
                title=n,
            )
        )
        stored = db.read(lambda s, r=run: load_run(s, r))
        assert (stored.prompt, stored.model, stored.reward, stored.sampler, stored.title) == (nasty,) * 5
        assert stored.config == {nasty: nasty} and stored.task["system"] == nasty
        assert [c.text for c in stored.candidates] == [nasty + " one", nasty + " two"]
        [cid] = db.write(lambda s, r=run: make_comparisons(s, r, "max_min"))
        sid = db.write(lambda s, n=nasty: start_session(s, n, client=n))
        db.write(
            lambda s, c=cid, n=nasty, sid=sid: add_vote(
                s, comparison_id=c, annotator=n, outcome="b", idempotency_key=n, rationale=n, session_id=sid
            )
        )
        [record] = [r for r in db.read(vote_records) if r.comparison_id == cid]
        assert (record.annotator, record.rationale, record.prompt) == (nasty, nasty, nasty)
        assert [v.outcome for v in db.read(lambda s, c=cid, n=nasty: vote_history(s, c, n))] == ["b"]
        assert db.read(lambda s, n=nasty: next_comparison(s, n)) is not None
    after = dump(db)
    for table, rows in before.items():  # every earlier row is still there, unchanged
        assert after[table][: len(rows)] == rows
    assert len(after["votes"]) == len(before["votes"]) + len(NASTY)
    assert len(after["runs"]) == len(before["runs"]) + len(NASTY)
